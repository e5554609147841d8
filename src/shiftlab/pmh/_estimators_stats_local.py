r"""Sufficient statistics of one shard of data, per estimator: the first half of the two-step estimators.

Each function takes the same arguments as the estimator of the same name (minus what is not a sum:
``isotropic`` with a given ``sigma`` needs no data), validates them exactly as the estimator does, and
returns :class:`~shiftlab.pmh._estimators_stats.NuisanceStatistics` of the rows it was given. Checks
that concern the whole data (two source classes, shared classes, rows per class, at least two rows)
wait for :func:`~shiftlab.pmh._estimators_stats_final.estimate_from_statistics`, because one shard may hold
few rows or few classes. Class labels must be class indices >= 0 here (they index the per-class sums).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from shiftlab.pmh._estimators import pick
from shiftlab.pmh._estimators_common import (
    Floor,
    check_int,
    check_labels,
    check_positive,
    check_samples,
    prepare_site,
    result_dtype,
    site_features,
)
from shiftlab.pmh._estimators_domain import check_pair, confident_labels
from shiftlab.pmh._estimators_moments import (
    coordinate_mask,
    sequence_list,
    temporal_deltas,
    within_item_residuals,
)
from shiftlab.pmh._estimators_pairs import (
    Augmentation,
    adversarial_deltas,
    augmentation_deltas,
    check_augmentations,
    check_style_pairs,
)
from shiftlab.pmh._estimators_stats import Moments, NuisanceStatistics


def class_ids(labels: Any, n: int, name: str) -> torch.Tensor:
    """Integer labels (as :func:`check_labels`) that are class indices >= 0."""
    y = check_labels(labels, n, name)
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} must be class indices >= 0 to be summed per class; got {int(y.min())}")
    return y


def _options(rank: int | None, floor: Floor, **more: Any) -> dict[str, Any]:
    return {"rank": rank, "floor": floor, **more}


def subspace_statistics(
    source: Any,
    source_labels: Any,
    target: Any,
    target_labels: Any,
    *,
    model: nn.Module | None = None,
    site: str = "input",
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceStatistics:
    """Per-class moments of source and target features for D1 (see :func:`~shiftlab.pmh.subspace`)."""
    xs, xt = check_pair(source, target)
    ys = class_ids(source_labels, xs.shape[0], "source_labels")
    yt = class_ids(target_labels, xt.shape[0], "target_labels")
    copy, shape = prepare_site(model, site, xs, rank, floor)
    fs, _ = site_features(xs, copy, site)
    ft, _ = site_features(xt, copy, site)
    return NuisanceStatistics(
        kind="subspace",
        site=site,
        shape=shape,
        moments={"source": Moments.of(fs, ys), "target": Moments.of(ft, yt)},
        counts={},
        fixed={},
        options=_options(rank, floor),
        dtype=result_dtype(fs, ft),
    )


def domain_statistics(
    source: Any,
    target: Any,
    source_labels: Any = None,
    target_labels: Any = None,
    *,
    model: nn.Module | None = None,
    site: str = "input",
    confidence: float = 0.9,
    min_per_class: int = 2,
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceStatistics:
    """Moments for D4 (see :func:`~shiftlab.pmh.domain`): per class with labels or confident
    pseudo-labels, one marginal group for the moment fallback."""
    xs, xt = check_pair(source, target)
    ys = None if source_labels is None else class_ids(source_labels, xs.shape[0], "source_labels")
    yt = None if target_labels is None else class_ids(target_labels, xt.shape[0], "target_labels")
    min_per_class = check_int(min_per_class, "min_per_class", low=2)
    confidence = check_positive(confidence, "confidence")
    if confidence > 1:
        raise ValueError(f"confidence must be in (0, 1]; got {confidence}")
    if ys is None and (yt is not None or model is not None):
        raise ValueError(
            "class-aligned estimation (target_labels or a model for pseudo-labels) needs source_labels; "
            "without them only the moment fallback (no labels, no model) applies"
        )
    copy, shape = prepare_site(model, site, xs, rank, floor)
    fs, _ = site_features(xs, copy, site)
    ft, _ = site_features(xt, copy, site)
    counts = {"n_source_rows": xs.shape[0], "n_target_rows": xt.shape[0]}
    if ys is not None and yt is not None:
        mode, target = "labelled", Moments.of(ft, yt)
    elif ys is not None and copy is not None:
        labels, keep = confident_labels(copy, xt, confidence)
        mode, target = "pseudo", Moments.of(ft.cpu()[keep], labels[keep])
        counts["n_target_confident"] = int(keep.sum())
    else:
        mode, target = "moments", Moments.of(ft)
    options = _options(
        rank,
        floor,
        mode=mode,
        min_per_class=min_per_class,
        confidence=confidence,
        source_labelled=ys is not None,
    )
    return NuisanceStatistics(
        kind="domain",
        site=site,
        shape=shape,
        moments={"source": Moments.of(fs, ys), "target": target},
        counts=counts,
        fixed={},
        options=options,
        dtype=result_dtype(fs, ft),
    )


def isotropic_statistics(
    repeats: Any, *, model: nn.Module | None = None, site: str = "input"
) -> NuisanceStatistics:
    """The within-item scatter of repeated measurements for D2 (see :func:`~shiftlab.pmh.isotropic`);
    every item's repeats must be on the same shard."""
    residual, shape, dtype = within_item_residuals(repeats, model, site)
    n_items, n_repeats, d = residual.shape
    return NuisanceStatistics(
        kind="isotropic",
        site=site,
        shape=shape,
        moments={"residual": Moments.of(residual.reshape(n_items * n_repeats, d))},
        counts={"n_items": n_items},
        fixed={"n_repeats": n_repeats},
        options={},
        dtype=dtype,
    )


def _with_signal(
    moments: dict[str, Moments], feats: torch.Tensor, labels: Any, name: str = "labels"
) -> dict[str, Moments]:
    if labels is not None:
        moments["base"] = Moments.of(feats, class_ids(labels, feats.shape[0], name), outer=False)
    return moments


def augmentation_statistics(
    x: Any,
    augmentations: Augmentation | Sequence[Augmentation],
    *,
    model: nn.Module | None = None,
    site: str = "input",
    n_draws: int = 1,
    seed: int = 0,
    labels: Any = None,
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceStatistics:
    """The moment of augmentation displacements for D3 (see :func:`~shiftlab.pmh.augmentation`)."""
    augs = check_augmentations(augmentations)
    xs = check_samples(x, "x")
    n_draws = check_int(n_draws, "n_draws", low=1)
    seed = check_int(seed, "seed", low=0)
    copy, shape = prepare_site(model, site, xs, rank, floor)
    base, deltas = augmentation_deltas(xs, augs, copy, site, n_draws=n_draws, seed=seed)
    return NuisanceStatistics(
        kind="augmentation",
        site=site,
        shape=shape,
        moments=_with_signal({"deltas": Moments.of(deltas)}, base, labels),
        counts={"n_samples": xs.shape[0]},
        fixed={"n_augmentations": len(augs), "n_draws": n_draws},
        options=_options(rank, floor),
        dtype=result_dtype(base),
    )


def style_statistics(
    content: Any,
    styled: Any,
    *,
    model: nn.Module | None = None,
    site: str = "input",
    labels: Any = None,
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceStatistics:
    """The moment of paired style displacements for D7 (see :func:`~shiftlab.pmh.style`)."""
    xc, xs = check_style_pairs(content, styled)
    copy, shape = prepare_site(model, site, xc, rank, floor)
    fc, _ = site_features(xc, copy, site)
    fs, _ = site_features(xs, copy, site)
    return NuisanceStatistics(
        kind="style",
        site=site,
        shape=shape,
        moments=_with_signal({"deltas": Moments.of(fs.double() - fc.double())}, fc, labels),
        counts={},
        fixed={},
        options=_options(rank, floor),
        dtype=result_dtype(fc, fs),
    )


def adversarial_statistics(model: nn.Module, x: Any, y: Any, **options: Any) -> NuisanceStatistics:
    """The moment of PGD displacements for D7 (see :func:`~shiftlab.pmh.adversarial`, whose keywords
    ``options`` takes). Every rank attacks its own rows with its own copy of the model, so the models must be
    identical; with ``random_start`` each rank draws its starts from ``seed`` (pass a per-rank seed, or
    ``random_start=False`` for a result independent of the sharding)."""
    deltas, feats, ys, shape = adversarial_deltas(model, x, y, **options)
    rank, floor = options.get("rank"), options.get("floor", 0.0)
    return NuisanceStatistics(
        kind="adversarial",
        site=options.get("site", "input"),
        shape=shape,
        moments=_with_signal({"deltas": Moments.of(deltas.double())}, feats, ys.cpu(), "y"),
        counts={"n_samples": deltas.shape[0]},
        fixed={"steps": int(options.get("steps", 10))},
        options=_options(rank, floor),
        dtype=result_dtype(feats),
    )


# the keywords are adversarial's: show them to signature checks (pick) and help()
adversarial_statistics.__signature__ = inspect.signature(adversarial_deltas).replace(  # type: ignore[attr-defined]
    return_annotation=NuisanceStatistics
)


def temporal_statistics(
    sequences: Any,
    *,
    lag: int = 1,
    model: nn.Module | None = None,
    site: str = "input",
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceStatistics:
    """The moment of successive differences for D6 (see :func:`~shiftlab.pmh.temporal`); every
    sequence must be whole on one shard."""
    lag = check_int(lag, "lag", low=1)
    seqs = sequence_list(sequences, lag)
    copy, shape = prepare_site(model, site, seqs[0], rank, floor)
    return NuisanceStatistics(
        kind="temporal",
        site=site,
        shape=shape,
        moments={"deltas": Moments.of(temporal_deltas(seqs, copy, site, lag))},
        counts={"n_sequences": len(seqs)},
        fixed={"lag": lag},
        options=_options(rank, floor),
        dtype=result_dtype(*seqs),
    )


def compositional_statistics(
    x: Any,
    coordinates: Any,
    *,
    feature_names: Sequence[str] | None = None,
    model: nn.Module | None = None,
    site: str = "input",
    labels: Any = None,
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceStatistics:
    """Moments of the coordinate-masked features for D5 (see :func:`~shiftlab.pmh.compositional`)."""
    xs = check_samples(x, "x")
    copy, shape = prepare_site(model, site, xs, rank, floor)
    mask, n_coordinates = coordinate_mask(coordinates, shape, feature_names)
    feats, _ = site_features(xs, copy, site)
    f64 = feats.double().cpu()
    selected = tuple(int(i) for i in mask.nonzero().flatten())
    return NuisanceStatistics(
        kind="compositional",
        site=site,
        shape=shape,
        moments=_with_signal({"x": Moments.of(f64 * mask)}, f64, labels),
        counts={},
        fixed={"n_coordinates": n_coordinates, "n_selected_dims": len(selected)},
        options=_options(rank, floor, selected=selected),
        dtype=result_dtype(feats),
    )


#: Estimator name -> the function computing its statistics on one shard.
STATISTICS: dict[str, Callable[..., NuisanceStatistics]] = {
    "subspace": subspace_statistics,
    "isotropic": isotropic_statistics,
    "augmentation": augmentation_statistics,
    "domain": domain_statistics,
    "compositional": compositional_statistics,
    "temporal": temporal_statistics,
    "style": style_statistics,
    "adversarial": adversarial_statistics,
}


def nuisance_statistics(kind: str, **kwargs: Any) -> NuisanceStatistics:
    r"""Sufficient statistics of estimator ``kind`` on the rows given (one shard of the data).

    Takes the keywords of the estimator of the same name (``estimate_nuisance(kind, ...)``) and returns
    addable sums (:class:`~shiftlab.pmh._estimators_stats.NuisanceStatistics`): per class
    :math:`n_c, \sum x, \sum x x^\top` of source and target features for ``subspace``/``domain``; the
    within-item scatter for ``isotropic``; :math:`N, \sum \delta\delta^\top` of the displacements for
    ``augmentation``, ``style`` and ``temporal``; the masked feature moments for ``compositional``; plus
    class sums of the features when ``labels`` are given (the signal directions); for ``adversarial``, the
    moment of this shard's PGD displacements and the class sums of its clean features. ``isotropic`` with
    a known ``sigma`` is not covered (no data to sum).

    Parameters
    ----------
    kind
        ``subspace``, ``isotropic``, ``augmentation``, ``domain``, ``compositional``, ``temporal``,
        ``style`` or ``adversarial``.
    **kwargs
        The estimator's keywords, with this shard's rows; class labels must be indices >= 0.

    Returns
    -------
    NuisanceStatistics
        Addable with ``+``; :func:`~shiftlab.pmh._estimators_stats_final.estimate_from_statistics` turns the
        total into the estimate.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    >>> stats = nuisance_statistics("temporal", sequences=x.reshape(2, 5, 2), rank=1)
    >>> stats.counts, int(stats.moments["deltas"].count[0])
    ({'n_sequences': 2}, 8)
    """
    if kind == "isotropic" and kwargs.get("sigma") is not None:
        raise ValueError(
            "isotropic with a given sigma has no statistics to sum: call shiftlab.pmh.isotropic(sigma=...)"
        )
    if kind == "isotropic":
        kwargs = {k: v for k, v in kwargs.items() if k != "sigma"}
    return pick(STATISTICS, kind, kwargs, "nuisance_statistics")(**kwargs)
