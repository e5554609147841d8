"""CIFAR-10 loader: exact round trip of the standard batch format, and refusal of unsafe pickles."""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shiftlab.data import DatasetNotAvailableError, UnsafePickleError, catalog, load
from shiftlab.data._safe_pickle import restricted_load

TRAIN = [f"data_batch_{k}" for k in range(1, 6)]
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler:
    """Emit the opcodes Python 2's cPickle (protocol 2) writes for a CIFAR-10 batch.

    The published ``cifar-10-batches-py`` files were written this way: strings are byte strings
    (SHORT_BINSTRING / BINSTRING, read back as ``bytes`` with ``encoding="bytes"``) and arrays are
    rebuilt by ``numpy.core.multiarray._reconstruct`` with a state tuple holding the raw buffer.
    """

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def string(self, value: bytes) -> None:
        if len(value) < 256:
            self.out += b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
        else:
            self.out += b"T" + struct.pack("<i", len(value)) + value  # BINSTRING

    def integer(self, value: int) -> None:
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])  # BININT1
        elif 0 <= value < 65536:
            self.out += b"M" + struct.pack("<H", value)  # BININT2
        else:
            self.out += b"J" + struct.pack("<i", value)  # BININT

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def value(self, obj: Any) -> None:
        if isinstance(obj, bytes):
            self.string(obj)
        elif isinstance(obj, bool):
            self.out += b"\x88" if obj else b"\x89"
        elif isinstance(obj, int):
            self.integer(obj)
        elif obj is None:
            self.out += b"N"
        elif isinstance(obj, list):
            self.out += b"](" if obj else b"]"
            for item in obj:
                self.value(item)
            if obj:
                self.out += b"e"  # APPENDS
        elif isinstance(obj, np.ndarray):
            self.array(obj)
        elif isinstance(obj, dict):
            self.out += b"}("
            for key, item in obj.items():
                self.value(key)
                self.value(item)
            self.out += b"u"  # SETITEMS
        else:  # pragma: no cover - writer only handles what CIFAR batches hold
            raise TypeError(type(obj))

    def array(self, arr: np.ndarray) -> None:
        assert arr.dtype == np.uint8 and arr.flags.c_contiguous
        self.global_("numpy.core.multiarray", "_reconstruct")
        self.global_("numpy", "ndarray")
        self.integer(0)
        self.out += b"\x85"  # TUPLE1
        self.string(b"b")
        self.out += b"\x87R"  # TUPLE3, REDUCE
        self.out += b"("  # MARK: state tuple (version, shape, dtype, is_fortran, raw bytes)
        self.integer(1)
        for dim in arr.shape:
            self.integer(dim)
        self.out += b"\x86"  # TUPLE2 (shape)
        self.global_("numpy", "dtype")
        self.string(b"u1")
        self.integer(0)
        self.integer(1)
        self.out += b"\x87R"  # TUPLE3, REDUCE
        self.out += b"("  # dtype state (3, '|', None, None, None, -1, -1, 0)
        self.integer(3)
        self.string(b"|")
        self.out += b"NNN"
        self.out += b"J" + struct.pack("<i", -1) + b"J" + struct.pack("<i", -1)
        self.integer(0)
        self.out += b"tb"  # TUPLE, BUILD
        self.out += b"\x89"  # NEWFALSE (not Fortran order)
        self.string(arr.tobytes())
        self.out += b"tb"  # TUPLE, BUILD

    def dumps(self, obj: Any) -> bytes:
        self.value(obj)
        return bytes(self.out + b".")


def write_cifar_pickle(path: Path, obj: dict[bytes, Any], protocol: int | str) -> None:
    """Write ``obj`` as CIFAR-10 does: ``"py2"`` for the original cPickle bytes, or a Python 3 protocol."""
    blob = _Py2Pickler().dumps(obj) if protocol == "py2" else pickle.dumps(obj, protocol=int(protocol))
    path.write_bytes(blob)


def cifar_batch(n: int, rng: np.random.Generator, label: str) -> dict[bytes, Any]:
    """A standard batch dict: uint8 rows of 3072 = R plane, G plane, B plane, each 32x32 row-major."""
    return {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{label}_{k}.png".encode() for k in range(n)],
    }


@pytest.fixture
def write_cifar(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, dict[bytes, Any]]]]:
    """Callable writing a tiny standard CIFAR-10 directory; returns (folder, batches by file name)."""

    def write(
        protocol: int | str = "py2",
        sizes: tuple[int, ...] = (3, 2, 2, 1, 2, 4),
        subdir: str = "cifar-10-batches-py",
    ) -> tuple[Path, dict[str, dict[bytes, Any]]]:
        folder = tmp_path / subdir
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(7)
        names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
        batches: dict[str, dict[bytes, Any]] = {}
        for name, n in zip(names, sizes, strict=True):
            batches[name] = cifar_batch(n, rng, name)
            write_cifar_pickle(folder / name, batches[name], protocol)
        meta = {
            b"num_cases_per_batch": 10000,
            b"label_names": [s.encode() for s in CIFAR_NAMES],
            b"num_vis": 3072,
        }
        write_cifar_pickle(folder / "batches.meta", meta, protocol)
        return folder, batches

    return write


WriteCifar = Callable[..., tuple[Path, dict[str, dict[bytes, Any]]]]


def _expected(batches: dict[str, dict[bytes, Any]], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    data = np.concatenate([batches[n][b"data"] for n in names])
    labels = np.concatenate([np.asarray(batches[n][b"labels"], dtype=np.int64) for n in names])
    return data, labels


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_round_trip_is_exact(write_cifar: WriteCifar, protocol: int | str) -> None:
    folder, batches = write_cifar(protocol=protocol)
    for split, names in (("train", TRAIN), ("test", ["test_batch"]), ("all", [*TRAIN, "test_batch"])):
        ds = load("cifar10", split, root=folder)
        data, labels = _expected(batches, names)
        assert ds.images.dtype == torch.float32 and tuple(ds.images.shape) == (len(data), 3, 32, 32)
        # the stored bytes come back exactly: x * 255 recovers every uint8 value
        back = torch.round(ds.images * 255).to(torch.uint8).reshape(len(data), -1).numpy()
        np.testing.assert_array_equal(back, data)
        np.testing.assert_array_equal(ds.labels.numpy(), labels)
        assert ds.class_names == tuple(CIFAR_NAMES)
        assert ds.provenance.split == split and ds.provenance.n == len(data)


def test_channel_order_and_pixel_layout(tmp_path: Path, write_cifar: WriteCifar) -> None:
    folder, _ = write_cifar()
    batch = cifar_batch(2, np.random.default_rng(0), "data_batch_1")
    row = np.zeros(3072, dtype=np.uint8)
    row[:1024] = 255  # red plane
    row[1024:2048] = 0  # green plane
    row[2048:] = 128  # blue plane
    row[1024 + 5 * 32 + 7] = 200  # green at (row 5, column 7): planes are row-major 32x32
    batch[b"data"][0] = row
    write_cifar_pickle(folder / "data_batch_1", batch, "py2")
    image = load("cifar10", "train", root=folder).images[0]
    assert torch.all(image[0] == 1.0)
    assert image[1, 5, 7] == pytest.approx(200 / 255)
    assert image[1].sum() == pytest.approx(200 / 255)
    assert torch.allclose(image[2], torch.full((32, 32), 128 / 255))


def test_indices_follow_all_order(write_cifar: WriteCifar) -> None:
    folder, _ = write_cifar(sizes=(3, 2, 2, 1, 2, 4))
    train, test = load("cifar10", "train", root=folder), load("cifar10", "test", root=folder)
    assert train.indices.tolist() == list(range(10))
    assert test.indices.tolist() == list(range(10, 14))
    everything = load("cifar10", "all", root=folder)
    assert torch.equal(everything.images[test.indices], test.images)


def test_parent_directory_is_accepted(write_cifar: WriteCifar) -> None:
    folder, _ = write_cifar()
    assert len(load("cifar10", "test", root=folder.parent)) == 4


def test_rewritten_file_is_read_again(write_cifar: WriteCifar) -> None:
    folder, _ = write_cifar()
    first = load("cifar10", "test", root=folder)
    new = cifar_batch(6, np.random.default_rng(99), "test_batch")
    write_cifar_pickle(folder / "test_batch", new, 4)
    second = load("cifar10", "test", root=folder)
    assert len(first) == 4 and len(second) == 6
    np.testing.assert_array_equal(second.labels.numpy(), new[b"labels"])


def test_missing_root_names_how_to_point_root() -> None:
    with pytest.raises(DatasetNotAvailableError, match=r"root='/path/to/cifar-10-batches-py'"):
        load("cifar10", "train")


def test_missing_batch_is_named(write_cifar: WriteCifar) -> None:
    folder, _ = write_cifar()
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotAvailableError, match="data_batch_3"):
        load("cifar10", "test", root=folder)


def test_catalog_sees_a_user_directory(write_cifar: WriteCifar) -> None:
    folder, _ = write_cifar()
    entry = next(e for e in catalog(cifar10_root=folder) if e.name == "cifar10")
    assert entry.available and entry.location == str(folder)
    assert not next(e for e in catalog() if e.name == "cifar10").available


# ------------------------------------------------------------------------------------ unsafe pickles


class _Gadget:
    """Pickles as a call to ``func(*args)``: what an attacker puts in a batch file."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _gadgets(marker: Path) -> list[tuple[str, Any]]:
    import builtins
    import subprocess

    command = f"touch {marker}"
    return [
        ("os.system", _Gadget(os.system, command)),
        ("subprocess.Popen", _Gadget(subprocess.Popen, ["touch", str(marker)])),
        ("builtins.eval", _Gadget(builtins.eval, f"open({str(marker)!r}, 'w')")),
        ("builtins.exec", _Gadget(builtins.exec, f"open({str(marker)!r}, 'w')")),
        ("builtins.__import__", _Gadget(getattr, _Gadget(__import__, "os"), "system")),
    ]


@pytest.mark.parametrize("gadget", range(5))
@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_batch_is_refused_without_running(
    write_cifar: WriteCifar, tmp_path: Path, gadget: int, protocol: int
) -> None:
    folder, _ = write_cifar()
    marker = tmp_path / "pwned"
    name, payload = _gadgets(marker)[gadget]
    evil = {b"data": payload, b"labels": [0], b"batch_label": b"x", b"filenames": [b"x"]}
    (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(ValueError, match="refusing to load global"):
        load("cifar10", "test", root=folder)
    assert not marker.exists(), f"{name} gadget ran"


def test_malicious_meta_is_refused(write_cifar: WriteCifar, tmp_path: Path) -> None:
    folder, _ = write_cifar()
    marker = tmp_path / "pwned"
    meta = {b"label_names": _Gadget(os.system, f"touch {marker}")}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    with pytest.raises(ValueError, match="refusing"):
        load("cifar10", "train", root=folder)
    assert not marker.exists()


def test_object_arrays_are_refused() -> None:
    blob = pickle.dumps({b"data": np.array([1, "a"], dtype=object)}, protocol=2)
    with pytest.raises(UnsafePickleError, match="dtype object"):
        restricted_load(io.BytesIO(blob), encoding="bytes")


def test_codecs_shim_refuses_other_codecs() -> None:
    # protocol 2 writes bytes as _codecs.encode(text, "latin1"); any other codec is refused
    blob = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R."
    with pytest.raises(UnsafePickleError, match="encoding 'base64'"):
        restricted_load(io.BytesIO(blob))


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"labels": [0]}, "no 'data' entry"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, "uint8 array of shape"),
        ({b"data": np.zeros((1, 100), np.uint8), b"labels": [0]}, "uint8 array of shape"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "'labels' must be 2 integers"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, "labels must lie in 0..9"),
    ],
)
def test_malformed_batch_is_a_value_error(
    write_cifar: WriteCifar, batch: dict[bytes, Any], message: str
) -> None:
    folder, _ = write_cifar()
    write_cifar_pickle(folder / "test_batch", batch, 4)
    with pytest.raises(ValueError, match=message):
        load("cifar10", "test", root=folder)


def test_not_a_pickle_is_a_value_error(write_cifar: WriteCifar) -> None:
    folder, _ = write_cifar()
    (folder / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        load("cifar10", "test", root=folder)
