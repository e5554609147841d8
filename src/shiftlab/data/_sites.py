"""``two_site``: MNIST (site A) vs UCI optdigits (site B), a real same-label shift on a common grid.

Why the preprocessing looks the way it does. The two sites digitised digits differently:

- MNIST (NIST SD-3/SD-1): each digit was size-normalised to fit a 20x20 box (aspect ratio kept),
  anti-aliased to grey levels, and centred by its centre of mass in a 28x28 frame, so a margin of
  about 4 px surrounds the ink.
- UCI optdigits (NIST preprocessing programs): each digit became a binary 32x32 bitmap filling the
  frame (in all 1,797 bundled images the ink reaches both the top and the bottom row), then the number
  of on-bits in each non-overlapping 4x4 block was counted, giving 8x8 values 0..16.

Comparing raw pixels would mostly measure the frame margin and the gain, which are bookkeeping, not the
shift of interest. :func:`harmonize_digits` therefore puts MNIST through the optdigits geometry —
crop to the ink bounding box, pad it to a square around its centre (aspect ratio kept), resample to
``k * resolution`` pixels a side and average k x k blocks (k = 4 at resolution 8: exactly the
32x32 -> 8x8 block count) — and both sites get the same per-image gain normalisation (divide by the
image's maximum, so each image peaks at 1). What stays different is real: writers, pens, scanner,
binarisation vs anti-aliasing, stroke width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from shiftlab.data._harmonize import _OVERSAMPLED_SIDE, MAX_RESOLUTION, MIN_RESOLUTION, harmonize_digits
from shiftlab.data._loaders import Provenance, normalize_name, raw, to_unit_float
from shiftlab.data._raw import _Raw
from shiftlab.data._site_types import SitePair, SiteSizes, SiteSplit, UnlabelledSplit
from shiftlab.data._split import stratified_partition

__all__ = ["SUPPORTED_PAIRS", "two_site"]

#: (source, target) pairs :func:`two_site` builds.
SUPPORTED_PAIRS: tuple[tuple[str, str], ...] = (("mnist", "digits"), ("mnist-5k", "digits"))

# Images the shipped files hold per source pool, used to reject impossible sizes before reading.
_SOURCE_POOLS: dict[str, tuple[str, str]] = {"mnist": ("train", "valid"), "mnist-5k": ("all", "all")}
_KNOWN_SIZES: dict[tuple[str, str], int] = {
    ("mnist", "train"): 50_000,
    ("mnist", "valid"): 10_000,
    ("mnist-5k", "all"): 5_000,
    ("digits", "all"): 1_797,
}

_DEFAULT_SIZES: dict[str, SiteSizes] = {
    "mnist": SiteSizes(),
    "mnist-5k": SiteSizes(source_train=4_000, source_val=1_000),
}


def _describe(source: str, resolution: int) -> str:
    k = max(1, math.ceil(_OVERSAMPLED_SIDE / resolution))
    scale = "x / 255" if source == "mnist-5k" else "stored values (already in [0, 1))"
    target_resize = (
        "kept at 8x8"
        if resolution == 8
        else ("bilinear upsampling" if resolution > 8 else "area averaging")
        + f" to {resolution}x{resolution}"
    )
    return (
        f"source {source}: {scale}; cropped to the ink bounding box (pixels > 0), padded to a square "
        f"around its centre (aspect ratio kept), bilinearly resampled to {k * resolution}x{k * resolution} "
        f"and averaged over {k}x{k} blocks to {resolution}x{resolution} (the optdigits 32x32 -> 4x4-block "
        f"geometry); target digits: x / 16, {target_resize}; both: each image divided by its own "
        "maximum (peak 1). No statistic of one site is used on the other."
    )


def _resolve_sizes(source: str, sizes: SiteSizes | Mapping[str, int] | None) -> SiteSizes:
    base = _DEFAULT_SIZES[source]
    if sizes is None:
        return base
    if isinstance(sizes, SiteSizes):
        return sizes
    if not isinstance(sizes, Mapping):
        raise TypeError(f"sizes must be a SiteSizes, a mapping or None, got {type(sizes).__name__}")
    valid = [f.name for f in dataclasses.fields(SiteSizes)]
    unknown = sorted(set(sizes) - set(valid))
    if unknown:
        raise ValueError(f"unknown size field(s) {unknown}; valid fields: {', '.join(valid)}")
    return dataclasses.replace(base, **dict(sizes))


def _check_capacity(
    source: str, target: str, sizes: SiteSizes, available: Mapping[tuple[str, str], int]
) -> None:
    train_pool, val_pool = _SOURCE_POOLS[source]
    wanted: dict[tuple[str, str], int] = {}
    for (dataset, pool), count in (
        ((source, train_pool), sizes.source_train),
        ((source, val_pool), sizes.source_val),
        ((target, "all"), sizes.target_pool + sizes.target_val + sizes.target_holdout),
    ):
        wanted[(dataset, pool)] = wanted.get((dataset, pool), 0) + count
    for (dataset, pool), count in wanted.items():
        have = available[(dataset, pool)]
        if count > have:
            raise ValueError(
                f"sizes ask for {count} images from {dataset!r} split {pool!r}, which holds {have}; "
                f"reduce sizes (got {sizes})"
            )


def _take(
    images: npt.NDArray[Any], labels: npt.NDArray[np.int64], positions: npt.NDArray[np.int64], divisor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return to_unit_float(images[positions], divisor), torch.from_numpy(labels[positions].copy())


def two_site(
    source: str = "mnist",
    target: str = "digits",
    resolution: int = 8,
    seed: int = 0,
    sizes: SiteSizes | Mapping[str, int] | None = None,
) -> SitePair:
    """Build the real two-site, same-label shift: MNIST (site A) -> UCI optdigits (site B).

    Preprocessing (see :func:`harmonize_digits` and the module notes for why): source images are
    cropped to their ink box, squared, resampled to the optdigits geometry at ``resolution``; target
    digits (x / 16) are resized only if ``resolution != 8`` (bilinear up, area down); then every image
    is divided by its own maximum. Nothing is estimated from either site, so no statistic leaks from
    target to source or between splits.

    Splits are drawn by stratified sampling (class proportions kept to about ±2 images per class),
    are pairwise disjoint, and depend only on ``seed`` (source and target use independent streams
    spawned from it). With source ``"mnist"``, ``source_train`` comes from MNIST train and
    ``source_val`` from MNIST valid; with ``"mnist-5k"`` both are disjoint parts of the 5,000 images.
    The 1,797 digits are split into ``target_pool`` / ``target_val`` / ``target_holdout``.

    Parameters
    ----------
    source : {"mnist", "mnist-5k"}
        Source site.
    target : {"digits"}
        Target site.
    resolution : int
        Common image side, in [4, 64]; 8 is the target's native resolution.
    seed : int
        Non-negative seed of the split draw.
    sizes : SiteSizes or mapping, optional
        Split sizes; a mapping overrides fields of the default (:class:`SiteSizes`, with source
        defaults 4,000 / 1,000 for ``"mnist-5k"``).

    Returns
    -------
    SitePair
        The five splits (images float32 (n, 1, R, R) in [0, 1], labels, indices into
        ``load(name, "all")``), provenance and the preprocessing in words.

    Raises
    ------
    ValueError
        Unsupported pair, resolution out of range, negative seed, sizes that do not fit the data
        (all checked before any data is read).
    DatasetNotAvailableError
        A site's data set is not installed.

    Examples
    --------
    >>> pair = two_site("mnist-5k", "digits", resolution=8, seed=0)
    >>> [len(split) for split in (pair.source_train, pair.source_val, pair.target_pool)]
    [4000, 1000, 600]
    >>> tuple(pair.target_holdout.x.shape), pair.target_holdout.x.dtype
    ((997, 1, 8, 8), torch.float32)
    >>> len(set(pair.target_pool.indices.tolist()) & set(pair.target_holdout.indices.tolist()))
    0
    """
    source_key, target_key = normalize_name(source), normalize_name(target)
    if (source_key, target_key) not in SUPPORTED_PAIRS:
        pairs = ", ".join(f"({s!r}, {t!r})" for s, t in SUPPORTED_PAIRS)
        raise ValueError(f"unsupported site pair ({source_key!r}, {target_key!r}); supported: {pairs}")
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int)
        or not (MIN_RESOLUTION <= resolution <= MAX_RESOLUTION)
    ):
        raise ValueError(
            f"resolution must be an int in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    resolved = _resolve_sizes(source_key, sizes)
    _check_capacity(source_key, target_key, resolved, _KNOWN_SIZES)

    src, tgt = raw(source_key), raw(target_key)
    # The files could differ from the shipped ones (e.g. a custom mnist root): check again on the real counts.
    train_pool, val_pool = _SOURCE_POOLS[source_key]
    _check_capacity(
        source_key,
        target_key,
        resolved,
        {
            (source_key, train_pool): len(src.splits[train_pool]),
            (source_key, val_pool): len(src.splits[val_pool]),
            (target_key, "all"): len(tgt.splits["all"]),
        },
    )
    src_rng, tgt_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))

    if train_pool == val_pool:
        pool = src.splits[train_pool]
        train_pos, val_pos = (
            pool[p]
            for p in stratified_partition(
                src.labels[pool], [resolved.source_train, resolved.source_val], src_rng
            )
        )
    else:
        train_pool_pos, val_pool_pos = src.splits[train_pool], src.splits[val_pool]
        (train_sel,) = stratified_partition(src.labels[train_pool_pos], [resolved.source_train], src_rng)
        (val_sel,) = stratified_partition(src.labels[val_pool_pos], [resolved.source_val], src_rng)
        train_pos, val_pos = train_pool_pos[train_sel], val_pool_pos[val_sel]
    target_pos = tgt.splits["all"]
    pool_sel, tval_sel, hold_sel = stratified_partition(
        tgt.labels[target_pos], [resolved.target_pool, resolved.target_val, resolved.target_holdout], tgt_rng
    )

    def source_split(positions: npt.NDArray[np.int64]) -> SiteSplit:
        x, y = _take(src.images, src.labels, positions, src.divisor)
        x = harmonize_digits(x, resolution, crop_to_ink=True)
        return SiteSplit(x=x, y=y, indices=torch.from_numpy(positions.copy()), dataset=source_key)

    def target_split(positions: npt.NDArray[np.int64]) -> SiteSplit:
        x, y = _take(tgt.images, tgt.labels, positions, tgt.divisor)
        x = harmonize_digits(x, resolution, crop_to_ink=False)
        return SiteSplit(x=x, y=y, indices=torch.from_numpy(positions.copy()), dataset=target_key)

    pool_split = target_split(target_pos[pool_sel])
    return SitePair(
        source_train=source_split(train_pos),
        source_val=source_split(val_pos),
        target_pool=UnlabelledSplit(x=pool_split.x, indices=pool_split.indices, dataset=target_key),
        target_pool_labels=pool_split.y,
        target_val=target_split(target_pos[tval_sel]),
        target_holdout=target_split(target_pos[hold_sel]),
        class_names=src.class_names,
        source=source_key,
        target=target_key,
        resolution=resolution,
        seed=int(seed),
        preprocessing=_describe(source_key, resolution),
        provenance={
            "source": _provenance(source_key, src),
            "target": _provenance(target_key, tgt),
        },
    )


def _provenance(name: str, data: _Raw) -> Provenance:
    return Provenance(
        source=name,
        location=data.location,
        package=data.package,
        split="all",
        n=len(data.splits["all"]),
        original_range=data.original_range,
        scaling=data.scaling,
        split_rule=data.split_rule,
    )
