r"""Sufficient statistics of the nuisance estimators: addable per-group moments (the estimate they
determine is :mod:`shiftlab.pmh._estimators_stats_final`).

Every estimator whose Σ is built from sums over rows can be computed in two steps: sums over the local
rows (:class:`Moments`: per group g, the count :math:`n_g`, :math:`\sum x` and :math:`\sum x x^\top`, in
float64), then one function of the summed statistics
(:func:`~shiftlab.pmh._estimators_stats_final.estimate_from_statistics`). Sums add
across shards, so shards of the data (ranks of a process group, chunks of a stream) give the estimate
of the whole data: ``estimate_from_statistics(a + b)`` equals the estimate from the rows of a and b
together, up to round-off. The last step is the one every single-process estimator ends in as well:
:func:`~shiftlab.pmh._estimators_common.estimate_from_rows` (spectrum, rank, floor, signal).

Memory: a statistic with outer products holds :math:`G d^2` doubles (G groups: the classes for the
class-aligned ``subspace`` and ``domain``, one otherwise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch


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


__all__ = ["Moments", "NuisanceStatistics"]
