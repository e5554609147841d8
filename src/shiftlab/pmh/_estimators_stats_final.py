r"""The nuisance estimate determined by summed sufficient statistics (see
:mod:`shiftlab.pmh._estimators_stats`): each estimator's formula on the totals, ending in the step every
single-process estimator ends in, :func:`~shiftlab.pmh._estimators_common.estimate_from_rows`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators_common import (
    estimate_from_rows,
    gram_rows,
    psd_rows,
    signal_basis_from_means,
)
from shiftlab.pmh._estimators_domain import (
    check_usable,
    confident_rows,
    shared_classes,
    source_classes,
    used_classes,
)
from shiftlab.pmh._estimators_moments import isotropic_from_spectrum
from shiftlab.pmh._estimators_stats import Moments, NuisanceStatistics


def _signal(moments: Moments | None, *, required: bool) -> torch.Tensor | None:
    """Orthonormal basis of the class-mean differences of the non-empty groups (None without labels)."""
    if moments is None:
        return None
    present = [k for k in range(moments.groups) if moments.count[k] > 0]
    basis = signal_basis_from_means(torch.stack([moments.mean(k) for k in present])) if present else None
    if basis is None and required:
        raise ValueError("labels hold a single class: the signal directions need at least 2 classes")
    return basis


def _finish(stats: NuisanceStatistics, second: torch.Tensor, **kwargs: Any) -> NuisanceEstimate:
    """:func:`estimate_from_rows` on rows of the (d, d) second moment, with the options of ``stats``."""
    return estimate_from_rows(
        gram_rows(second),
        site=stats.site,
        shape=stats.shape,
        estimator=stats.kind,
        rank=stats.options["rank"],
        floor=stats.options["floor"],
        dtype=stats.dtype,
        **kwargs,
    )


def _subspace(stats: NuisanceStatistics) -> NuisanceEstimate:
    s, t = stats.moments["source"], stats.moments["target"]
    source_counts = source_classes(s.class_counts())
    target_counts = t.class_counts()
    shared = shared_classes(source_counts, target_counts)
    n_t = sum(target_counts[c] for c in shared)
    n_s = sum(source_counts[c] for c in shared)
    d = s.total.shape[1]
    second = torch.zeros(d, d, dtype=torch.float64)
    for c in shared:
        shift = t.mean(c) - s.mean(c)
        within = t.covariance(c, unbiased=False) + s.covariance(c, unbiased=False)
        second += target_counts[c] / n_t * (torch.outer(shift, shift) + within)
    counts = {
        "n_source": n_s,
        "n_target": n_t,
        "n_classes": len(shared),
        "n_pairs": sum(source_counts[c] * target_counts[c] for c in shared),
    }
    return _finish(stats, second, n_data=n_s + n_t, counts=counts, signal=_signal(s, required=False))


def _aligned(shift: torch.Tensor, target_cov: torch.Tensor, source_cov: torch.Tensor) -> torch.Tensor:
    r""":math:`\Delta\mu\Delta\mu^\top + (C_t - C_s)_+` as a (d, d) matrix."""
    positive = psd_rows(target_cov - source_cov)
    return torch.outer(shift, shift) + positive.T @ positive


def _domain(stats: NuisanceStatistics) -> NuisanceEstimate:
    s, t = stats.moments["source"], stats.moments["target"]
    mode, options = stats.options["mode"], stats.options
    n_s_rows, n_t_rows = stats.counts["n_source_rows"], stats.counts["n_target_rows"]
    if n_s_rows < 2 or n_t_rows < 2:
        raise ValueError(f"domain needs >= 2 rows per domain; got source {n_s_rows}, target {n_t_rows}")
    if options["source_labelled"]:
        source_classes(s.class_counts())
        if mode == "labelled":
            shared_classes(s.class_counts(), t.class_counts())
    signal = _signal(s, required=False) if options["source_labelled"] else None
    if mode == "moments":
        ms, mt = s.merged(), t.merged()
        second = _aligned(
            mt.mean(0) - ms.mean(0), mt.covariance(0, unbiased=True), ms.covariance(0, unbiased=True)
        )
        counts = {"n_source": n_s_rows, "n_target": n_t_rows, "n_classes": 0}
        return _finish(stats, second, n_data=n_s_rows + n_t_rows, counts=counts, signal=signal)
    source_counts, target_counts = s.class_counts(), t.class_counts()
    min_per_class = options["min_per_class"]
    used = used_classes(source_counts, target_counts, min_per_class)
    if mode == "labelled":
        key, kept, what = "n_target_labelled", n_t_rows, f"{n_t_rows} labelled target rows"
    else:
        kept = stats.counts["n_target_confident"]
        key, what = "n_target_confident", confident_rows(kept, n_t_rows, options["confidence"])
    needed = 1 if mode == "labelled" else 2
    check_usable(used, needed, what, source_counts, target_counts, min_per_class)
    n_t = sum(target_counts[c] for c in used)
    n_s = sum(source_counts[c] for c in used)
    d = s.total.shape[1]
    second = torch.zeros(d, d, dtype=torch.float64)
    for c in used:
        aligned = _aligned(
            t.mean(c) - s.mean(c), t.covariance(c, unbiased=True), s.covariance(c, unbiased=True)
        )
        second += target_counts[c] / n_t * aligned
    counts = {"n_source": n_s, "n_target": n_t, "n_classes": len(used), key: kept}
    return _finish(stats, second, n_data=n_s + n_t, counts=counts, signal=signal)


def _isotropic(stats: NuisanceStatistics) -> NuisanceEstimate:
    within = stats.moments["residual"]
    assert within.outer is not None
    n_items, n_repeats = stats.counts["n_items"], stats.fixed["n_repeats"]
    dof = n_items * (n_repeats - 1)
    # W is PSD: its negative eigenvalues are round-off and become 0, as the SVD's squares would be
    values = torch.linalg.eigvalsh(within.outer[0]).flip(0).clamp(min=0.0) / dof
    counts = {"n_items": n_items, "n_repeats": n_repeats}
    return isotropic_from_spectrum(
        values, dof=dof, site=stats.site, shape=stats.shape, counts=counts, dtype=stats.dtype
    )


def _deltas(stats: NuisanceStatistics) -> NuisanceEstimate:
    deltas = stats.moments["deltas"]
    assert deltas.outer is not None
    n = round(float(deltas.count[0]))
    if stats.kind == "augmentation":
        counts = {
            "n_samples": stats.counts["n_samples"],
            "n_augmentations": stats.fixed["n_augmentations"],
            "n_draws": stats.fixed["n_draws"],
            "n_deltas": n,
        }
    elif stats.kind == "style":
        counts = {"n_pairs": n}
    elif stats.kind == "adversarial":
        counts = {"n_samples": n, "steps": stats.fixed["steps"]}
    else:
        counts = {"n_sequences": stats.counts["n_sequences"], "n_differences": n}
    signal = _signal(stats.moments.get("base"), required=True)
    return _finish(stats, deltas.outer[0] / n, n_data=n, counts=counts, signal=signal)


def _compositional(stats: NuisanceStatistics) -> NuisanceEstimate:
    x = stats.moments["x"]
    n = round(float(x.count[0]))
    if n < 2:
        raise ValueError(f"x needs at least 2 rows; got {n}")
    counts = {
        "n_samples": n,
        "n_coordinates": stats.fixed["n_coordinates"],
        "n_selected_dims": stats.fixed["n_selected_dims"],
    }
    signal = _signal(stats.moments.get("base"), required=True)
    return _finish(stats, x.covariance(0, unbiased=True), n_data=n, counts=counts, signal=signal)


_FINAL: dict[str, Callable[[NuisanceStatistics], NuisanceEstimate]] = {
    "subspace": _subspace,
    "isotropic": _isotropic,
    "augmentation": _deltas,
    "domain": _domain,
    "compositional": _compositional,
    "temporal": _deltas,
    "style": _deltas,
    "adversarial": _deltas,
}


def estimate_from_statistics(stats: NuisanceStatistics) -> NuisanceEstimate:
    r"""The nuisance estimate determined by summed sufficient statistics.

    With per-group moments :math:`n_g, s_g = \sum x, S_g = \sum x x^\top` (float64), means
    :math:`\mu_g = s_g / n_g` and covariances :math:`C_g = (S_g - n_g \mu_g\mu_g^\top) / (n_g - 1)`
    (unbiased) or :math:`/ n_g` (population), each estimator's formula (see its own docstring) is:

    - ``subspace``: :math:`\sum_c \pi_c [\Delta\mu_c\Delta\mu_c^\top + C_{t,c} + C_{s,c}]` (population);
    - ``domain``: :math:`\sum_c \pi_c [\Delta\mu_c\Delta\mu_c^\top + (C_{t,c} - C_{s,c})_+]` (unbiased;
      one marginal group in the moment fallback);
    - ``isotropic``: :math:`\hat\sigma^2 = \operatorname{tr} W / (n (R-1) d)` from the within-item scatter W;
    - ``augmentation``, ``style``, ``temporal``, ``adversarial``: :math:`\frac1N \sum_i \delta_i\delta_i^\top`
      (uncentred);
    - ``compositional``: the unbiased covariance of the coordinate-masked features.

    The (d, d) result goes through the same final step as the single-process estimators
    (:func:`~shiftlab.pmh._estimators_common.estimate_from_rows`), so the estimate equals theirs up to
    round-off; class and sample checks (two source classes, shared classes, rows per class) run here, on
    the totals.

    Parameters
    ----------
    stats
        Statistics of all the rows (summed over shards with ``+`` or an all-reduce).

    Returns
    -------
    NuisanceEstimate
        With the estimator's counts, spectrum, rank, floor and signal, as the single-process estimator
        gives them.

    Raises
    ------
    ValueError
        The estimator's checks on the whole data (e.g. one source class, no shared class, too few rows).

    Examples
    --------
    >>> import torch
    >>> from shiftlab.pmh import style
    >>> from shiftlab.pmh._estimators_stats_local import nuisance_statistics
    >>> g = torch.Generator().manual_seed(0)
    >>> content = torch.randn(100, 3, generator=g, dtype=torch.float64)
    >>> styled = content + torch.tensor([0.0, 0.0, 1.0]) + 0.1 * torch.randn(100, 3, generator=g)
    >>> halves = [nuisance_statistics("style", content=content[i::2], styled=styled[i::2], rank=1)
    ...           for i in (0, 1)]
    >>> merged = estimate_from_statistics(halves[0] + halves[1])
    >>> whole = style(content, styled, rank=1)
    >>> torch.allclose(merged.covariance(), whole.covariance()), merged.counts
    (True, {'n_pairs': 100})
    """
    if not isinstance(stats, NuisanceStatistics):
        raise TypeError(f"stats must be NuisanceStatistics; got {type(stats).__name__}")
    if stats.kind not in _FINAL:
        raise ValueError(f"no sufficient statistics for {stats.kind!r}; covered: {', '.join(_FINAL)}")
    return _FINAL[stats.kind](stats)


#: Estimators with sufficient statistics (the ``kind`` values :func:`estimate_from_statistics` accepts).
STATISTICS_KINDS: tuple[str, ...] = tuple(_FINAL)

__all__ = ["STATISTICS_KINDS", "estimate_from_statistics"]
