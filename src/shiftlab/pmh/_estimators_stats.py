r"""Sufficient statistics of the nuisance estimators, and the estimate they determine.

Every estimator whose Σ is built from sums over rows can be computed in two steps: sums over the local
rows (:class:`Moments`: per group g, the count :math:`n_g`, :math:`\sum x` and :math:`\sum x x^\top`, in
float64), then one function of the summed statistics (:func:`estimate_from_statistics`). Sums add
across shards, so shards of the data (ranks of a process group, chunks of a stream) give the estimate
of the whole data: ``estimate_from_statistics(a + b)`` equals the estimate from the rows of a and b
together, up to round-off. The last step is the one every single-process estimator ends in as well:
:func:`~shiftlab.pmh._estimators_common.estimate_from_rows` (spectrum, rank, floor, signal).

Memory: a statistic with outer products holds :math:`G d^2` doubles (G groups: the classes for the
class-aligned ``subspace`` and ``domain``, one otherwise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
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


@dataclasses.dataclass(frozen=True)
class Moments:
    r"""Per-group row sums: ``count`` (G,), ``total`` (G, d) = :math:`\sum x`, ``outer`` (G, d, d) =
    :math:`\sum x x^\top` (or ``None`` where only means are needed), all float64 on the CPU.

    Sums of disjoint rows add (``a + b``), so shards give the moments of their union.

    Examples
    --------
    >>> rows = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    >>> m = Moments.of(rows[:2], torch.tensor([0, 0])) + Moments.of(rows[2:], torch.tensor([1]))
    >>> m.count.tolist(), m.mean(0).tolist(), m.covariance(0, unbiased=True).tolist()
    ([2.0, 1.0], [2.0, 1.0], [[2.0, 2.0], [2.0, 2.0]])
    """

    count: torch.Tensor
    total: torch.Tensor
    outer: torch.Tensor | None

    def __post_init__(self) -> None:
        g = self.count.shape[0]
        if self.count.ndim != 1 or self.total.ndim != 2 or self.total.shape[0] != g:
            raise ValueError(f"count (G,) and total (G, d) disagree: {self.count.shape}, {self.total.shape}")
        d = self.total.shape[1]
        if self.outer is not None and self.outer.shape != (g, d, d):
            raise ValueError(f"outer must have shape ({g}, {d}, {d}); got {tuple(self.outer.shape)}")
        tensors = (self.count, self.total) if self.outer is None else (self.count, self.total, self.outer)
        if any(t.dtype != torch.float64 for t in tensors):
            raise TypeError("Moments hold float64 tensors (sums of many rows lose digits in float32)")

    @classmethod
    def of(cls, rows: torch.Tensor, groups: torch.Tensor | None = None, *, outer: bool = True) -> Moments:
        """Sums of the float64 ``rows`` (n, d), per group id in ``groups`` (n,) (ids >= 0; one group when
        ``None``); G is the largest id + 1 (0 rows give G = 0)."""
        x = rows.detach().double().cpu()
        g = torch.zeros(x.shape[0], dtype=torch.long) if groups is None else groups.long().cpu()
        n_groups = int(g.max()) + 1 if g.numel() else (1 if groups is None else 0)
        count = torch.bincount(g, minlength=n_groups).double()
        total = torch.zeros(n_groups, x.shape[1], dtype=torch.float64).index_add_(0, g, x)
        second = None
        if outer:
            second = torch.zeros(n_groups, x.shape[1], x.shape[1], dtype=torch.float64)
            for k in torch.unique(g).tolist():
                part = x[g == k]
                second[k] = part.T @ part
        return cls(count, total, second)

    @property
    def groups(self) -> int:
        """G, the number of groups (class ids 0..G-1)."""
        return int(self.count.shape[0])

    def padded(self, groups: int) -> Moments:
        """The same sums with empty groups appended up to ``groups``."""
        extra = groups - self.groups
        if extra < 0:
            raise ValueError(f"cannot pad {self.groups} groups down to {groups}")
        if extra == 0:
            return self
        d = self.total.shape[1]
        outer = None if self.outer is None else torch.cat([self.outer, self.outer.new_zeros(extra, d, d)])
        return Moments(
            torch.cat([self.count, self.count.new_zeros(extra)]),
            torch.cat([self.total, self.total.new_zeros(extra, d)]),
            outer,
        )

    def __add__(self, other: Moments) -> Moments:
        if self.total.shape[1] != other.total.shape[1] or (self.outer is None) != (other.outer is None):
            raise ValueError("cannot add moments of different dimensions or with/without outer products")
        g = max(self.groups, other.groups)
        a, b = self.padded(g), other.padded(g)
        outer = None if a.outer is None or b.outer is None else a.outer + b.outer
        return Moments(a.count + b.count, a.total + b.total, outer)

    def class_counts(self) -> dict[int, int]:
        """Group id -> rows, for the non-empty groups."""
        return {k: round(float(c)) for k, c in enumerate(self.count) if c > 0}

    def mean(self, k: int) -> torch.Tensor:
        r""":math:`\mu_k = \sum x / n_k`."""
        return self.total[k] / self.count[k]

    def covariance(self, k: int, *, unbiased: bool) -> torch.Tensor:
        r""":math:`(\sum x x^\top - n_k \mu_k \mu_k^\top) / (n_k - 1)` (unbiased) or :math:`/ n_k`."""
        if self.outer is None:
            raise ValueError("these moments carry no outer products")
        n = float(self.count[k])
        centred = self.outer[k] - torch.outer(self.total[k], self.total[k]) / n
        return centred / (n - 1 if unbiased else n)

    def merged(self) -> Moments:
        """All groups summed into one."""
        outer = None if self.outer is None else self.outer.sum(0, keepdim=True)
        return Moments(self.count.sum(0, keepdim=True), self.total.sum(0, keepdim=True), outer)


@dataclasses.dataclass(frozen=True)
class NuisanceStatistics:
    """The sufficient statistics of one estimator on some rows, addable across shards.

    Attributes
    ----------
    kind
        Estimator name (``"subspace"``, ``"domain"``, ``"isotropic"``, ``"augmentation"``,
        ``"compositional"``, ``"temporal"``, ``"style"``).
    site, shape
        Perturbation site and the per-sample shape there.
    moments
        Named :class:`Moments` (e.g. ``"source"`` and ``"target"`` per class, ``"deltas"``).
    counts
        Row counts that add across shards (e.g. ``n_samples``, ``n_sequences``).
    fixed
        Integers every shard must agree on (e.g. ``n_repeats``, ``n_draws``, ``lag``).
    options
        Settings of the final step every shard must agree on (``rank``, ``floor``, ``mode``, ...).
    dtype
        dtype of the estimate (float64 when the features were float64, else float32).

    Examples
    --------
    >>> from shiftlab.pmh._estimators_stats_local import nuisance_statistics
    >>> seqs = torch.arange(24.0).reshape(3, 4, 2)
    >>> total = nuisance_statistics("temporal", sequences=seqs[:1]) + nuisance_statistics(
    ...     "temporal", sequences=seqs[1:])
    >>> total.counts, total.fixed, total.moments["deltas"].count.tolist()
    ({'n_sequences': 3}, {'lag': 1}, [9.0])
    """

    kind: str
    site: str
    shape: tuple[int, ...]
    moments: Mapping[str, Moments]
    counts: Mapping[str, int]
    fixed: Mapping[str, int]
    options: Mapping[str, Any]
    dtype: torch.dtype

    def signature(self) -> dict[str, Any]:
        """Everything that must be equal for two statistics to be added."""
        return {
            "kind": self.kind,
            "site": self.site,
            "shape": tuple(self.shape),
            "moments": {k: (m.total.shape[1], m.outer is not None) for k, m in sorted(self.moments.items())},
            "counts": sorted(self.counts),
            "fixed": dict(sorted(self.fixed.items())),
            "options": dict(sorted(self.options.items())),
            "dtype": str(self.dtype),
        }

    def __add__(self, other: NuisanceStatistics) -> NuisanceStatistics:
        mine, theirs = self.signature(), other.signature()
        if mine != theirs:
            differ = sorted(k for k in mine if mine[k] != theirs[k])
            raise ValueError(f"cannot add statistics that differ in {differ}: {mine} vs {theirs}")
        return dataclasses.replace(
            self,
            moments={k: m + other.moments[k] for k, m in self.moments.items()},
            counts={k: v + other.counts[k] for k, v in self.counts.items()},
        )


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

__all__ = ["STATISTICS_KINDS", "Moments", "NuisanceStatistics", "estimate_from_statistics"]
