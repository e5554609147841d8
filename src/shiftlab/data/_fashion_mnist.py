"""Fashion-MNIST from its four idx files (Debian's ``dataset-fashion-mnist`` or a user folder) as cached,
read-only raw arrays, and :func:`read_idx` for the idx container itself.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shiftlab.data._catalog import FASHION_MNIST_FILES, fashion_mnist_dir, idx_file
from shiftlab.data._raw import _consecutive_splits, _Raw, _readonly, _stat_key

__all__ = ["read_idx"]

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
