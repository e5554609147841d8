"""The raw-array container every data-set family fills, and the caching and split helpers they share.

Each family (:mod:`~shiftlab.data._digit_sets`, :mod:`~shiftlab.data._fashion_mnist`,
:mod:`~shiftlab.data._cifar`) reads its files once per process, keyed by path, modification time and
size, into a :class:`_Raw` of read-only numpy arrays.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from shiftlab.data._split import stratified_partition

#: Fixed split of the sets that ship without one (digits, mnist-5k): a stratified 75 / 25 partition
#: drawn once with this seed. The seed is part of the data definition, not a user knob.
FIXED_SPLIT_SEED = 0
FIXED_TEST_FRACTION = 0.25


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
