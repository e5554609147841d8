"""Reader for the standard CIFAR-10 "python version" directory (``cifar-10-batches-py``).

Format (https://www.cs.toronto.edu/~kriz/cifar.html): each of ``data_batch_1`` .. ``data_batch_5`` and
``test_batch`` is a pickled dict with

- ``b"data"``: uint8 array (n, 3072); each row is a 32x32 colour image stored as three row-major
  planes, red first (entries 0..1023), then green (1024..2047), then blue (2048..3071);
- ``b"labels"``: list of n ints in 0..9;
- ``b"batch_label"``, ``b"filenames"``: metadata (not needed).

``batches.meta`` is a dict whose ``b"label_names"`` lists the 10 class names. The files are read with
:class:`~shiftlab.data._safe_pickle.RestrictedUnpickler`, which rebuilds numpy arrays and plain
containers only.

:func:`_raw_cifar` assembles the six batches into cached, read-only raw arrays for
:func:`~shiftlab.data.load`.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shiftlab.data._catalog import CIFAR10_META_FILE, CIFAR10_TEST_FILES, CIFAR10_TRAIN_FILES, cifar10_dir
from shiftlab.data._raw import _consecutive_splits, _Raw, _readonly, _stat_key
from shiftlab.data._safe_pickle import restricted_load

__all__ = ["read_cifar10_batch", "read_cifar10_meta"]

_N_CLASSES = 10
_ROW = 3 * 32 * 32


def _field(record: dict[Any, Any], key: str) -> Any:
    # Python-2 pickles read with encoding="bytes" have bytes keys; Python-3 re-saves may have str keys.
    for candidate in (key.encode(), key):
        if candidate in record:
            return record[candidate]
    raise KeyError(key)


def _load_dict(path: Path) -> dict[Any, Any]:
    try:
        with path.open("rb") as fh:
            record = restricted_load(fh, encoding="bytes")
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} is not a CIFAR-10 batch file: {exc}") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path} is not a readable CIFAR-10 pickle: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch file: top level is {type(record).__name__}")
    return record


def read_cifar10_batch(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Read one batch file as read-only ``(images (n, 3, 32, 32) uint8, labels (n,) int64)``.

    Raises
    ------
    ValueError
        If the file is not a CIFAR-10 batch, including any pickle that names a global outside the
        numpy-array allow-list (such a file is refused before anything it names is called).
    """
    record = _load_dict(path)
    try:
        data = _field(record, "data")
        labels_raw = _field(record, "labels")
    except KeyError as exc:
        raise ValueError(f"{path} is not a CIFAR-10 batch file: no {exc.args[0]!r} entry") from exc
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (n, {_ROW}), got {got}")
    labels = np.asarray(labels_raw)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: 'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= _N_CLASSES):
        raise ValueError(f"{path}: labels must lie in 0..{_N_CLASSES - 1}")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def read_cifar10_meta(path: Path) -> tuple[str, ...]:
    """Read the 10 class names from ``batches.meta``."""
    record = _load_dict(path)
    try:
        names = _field(record, "label_names")
    except KeyError as exc:
        raise ValueError(f"{path} is not a CIFAR-10 meta file: no 'label_names' entry") from exc
    if not isinstance(names, list | tuple) or len(names) != _N_CLASSES:
        raise ValueError(f"{path}: 'label_names' must list {_N_CLASSES} names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


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
