"""The audit's resampling engine: raw and partial correlations of many metrics with one target, at once.

For a cell of ``n`` runs, ``M`` metric columns, a target and a ``(n, p)`` baseline design, one vectorised
statistic returns both correlations of every metric for a whole batch of resamples:

- raw: Spearman (or Pearson) correlation of metric and target;
- partial: the same given the baselines, either by least squares re-fitted in every resample
  (``nuisance="linear"``), or as the correlation of cross-fitted nonlinear residuals computed once
  (``nuisance="kernel_ridge"`` or a callable regressor).

Rows are resampled independently (:func:`~shiftlab.functional.paired_bootstrap_ci`), by cluster
(:func:`~shiftlab.functional.cluster_bootstrap.cluster_bootstrap`, one cluster per inference unit), or
by contiguous blocks of a per-step series (the same, with ``clusters = arange(n) // block``, plus a block
permutation test for the p-value).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shiftlab.functional.cluster_bootstrap import (
    cluster_bootstrap,
    weighted_correlations,
    weighted_partial_correlation,
)
from shiftlab.functional.crossfit import Regressor, crossfit_residuals
from shiftlab.functional.resampling import paired_bootstrap_ci, permutation_test
from shiftlab.functional.stats import pearson, rankdata

__all__ = [
    "MIN_CLUSTERS",
    "CellStatistics",
    "Resampling",
    "cell_statistics",
    "check_clusters",
    "linear_residuals",
]

#: Residual norm below this fraction of the centred norm: the column lies in the span of the baselines.
SPAN_TOLERANCE = 1e-10
#: Fewest clusters (units or blocks) to resample: with G clusters there are only C(2G-1, G) distinct
#: resamples (10 for G = 3, 126 for G = 5), too few below 5 for a percentile interval.
MIN_CLUSTERS = 5
#: Below this many clusters the interval is reported as approximate (the cluster bootstrap is known to
#: under-cover with few clusters; Cameron, Gelbach & Miller 2008).
FEW_CLUSTERS = 20


def check_clusters(codes: torch.Tensor, where: str) -> None:
    """Raise unless ``codes`` holds at least :data:`MIN_CLUSTERS` distinct clusters."""
    count = int(torch.unique(codes).numel())
    if count < MIN_CLUSTERS:
        raise ValueError(
            f"{where} has {count} distinct inference unit(s); resampling units needs at least {MIN_CLUSTERS} "
            "(with fewer there are too few distinct resamples for an interval). Drop the unit, or use a unit "
            "with more levels"
        )


@dataclass(frozen=True)
class Resampling:
    """How rows are resampled: independent runs, clusters of runs (``units``), or blocks of a series."""

    units: torch.Tensor | None = None
    block_size: int | None = None

    def clusters(self, n: int) -> torch.Tensor | None:
        """Cluster code of each row, or ``None`` for independent rows."""
        if self.block_size is not None:
            return torch.arange(n) // self.block_size
        return self.units

    def describe(self, n: int) -> str:
        """One phrase naming the inference, e.g. ``"cluster bootstrap over 12 units"``."""
        if self.block_size is not None:
            blocks = -(-n // self.block_size)
            few = " (fewer than 20 blocks: intervals approximate)" if blocks < FEW_CLUSTERS else ""
            return f"block bootstrap and block permutation ({blocks} blocks of {self.block_size} steps){few}"
        if self.units is not None:
            count = int(torch.unique(self.units).numel())
            few = " (fewer than 20 units: intervals approximate)" if count < FEW_CLUSTERS else ""
            return f"cluster bootstrap over {count} units{few}"
        return "bootstrap over runs"


@dataclass(frozen=True)
class CellStatistics:
    """Correlations of one cell: ``[raw, partial]`` estimates ``(2, M)`` and replicates ``(B, 2, M)``."""

    estimate: torch.Tensor
    distribution: torch.Tensor
    explained: torch.Tensor
    """``(M,)`` bool: the metric is (after ranking) a linear function of the baselines; partial r := 0."""
    degenerate: torch.Tensor
    """``(2, M)``: resamples in which the raw / partial correlation was undefined and counted as 0."""
    permutation_p: torch.Tensor | None
    """``(M,)`` block-permutation p-values of the partial correlation (series mode), else ``None``."""
    metric_residuals: torch.Tensor
    """``(n, M)`` residuals of the (ranked) metrics given the baselines, for the partial residual plot."""
    target_residuals: torch.Tensor
    """``(n,)`` residuals of the (ranked) target given the baselines."""
    design_columns: int
    """Number of control columns ``p`` (numeric baselines plus dummies)."""


def linear_residuals(values: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
    """Least-squares residuals of the columns of ``values`` (n, c) on ``[1, design]`` (n, p)."""
    centred = values - values.mean(dim=0, keepdim=True)
    if design.shape[1] == 0:
        return centred
    d = design - design.mean(dim=0, keepdim=True)
    norms = torch.linalg.vector_norm(d, dim=0, keepdim=True)
    d = d / torch.where(norms > 0, norms, torch.ones_like(norms))
    return centred - d @ (torch.linalg.pinv(d, rtol=1e-10) @ centred)


def _in_span(values: torch.Tensor, residuals: torch.Tensor) -> torch.Tensor:
    centred = values - values.mean(dim=0, keepdim=True)
    return torch.linalg.vector_norm(residuals, dim=0) <= SPAN_TOLERANCE * torch.linalg.vector_norm(
        centred, dim=0
    )


class _Statistic:
    """Weighted ``(x, y, design, ex, ey, weights) -> (B, 2, M)`` that counts degenerate resamples.

    The data carry a leading batch dimension of 1 (``x`` is ``(1, n, M)``) and are shared by all
    resamples; ``weights`` is ``(B, n)``: resample ``b`` repeats row ``i`` ``weights[b, i]`` times.
    A correlation is undefined in a resample where a variable is constant or (partial) where the metric or
    the target is an exact linear function of the baselines (small ``n``: e.g. target and baseline ranks
    coincide among the drawn runs). The metric adds nothing there, so the value is 0 and the resample is
    counted in :attr:`degenerate` (``(2, M)``, raw and partial), which the report shows.
    """

    def __init__(self, method: str, crossfit: bool, explained: torch.Tensor) -> None:
        self.method = method
        self.crossfit = crossfit
        self.explained = explained
        self.degenerate = torch.zeros(2, explained.shape[0], dtype=torch.long, device=explained.device)

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        design: torch.Tensor,
        ex: torch.Tensor,
        ey: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        w = weights[:, None, :]  # (B, 1, n)
        xs, ys = x.mT, y[:, None, :]  # (1, M, n), (1, 1, n)
        covariates = None if self.crossfit or design.shape[-1] == 0 else design[:, None]  # (1, 1, n, p)
        corr = weighted_correlations(xs, ys, covariates, w, method=self.method)  # type: ignore[arg-type]
        raw, partial = corr.raw, corr.partial
        if self.crossfit:
            partial = weighted_partial_correlation(ex.mT, ey[:, None, :], None, w)
        partial = torch.where(self.explained, torch.zeros_like(partial), partial)
        out = torch.stack(torch.broadcast_tensors(raw, partial), dim=1)
        undefined = torch.isnan(out)
        self.degenerate += undefined.sum(dim=0)
        return torch.where(undefined, torch.zeros_like(out), out)


def cell_statistics(
    x: torch.Tensor,
    y: torch.Tensor,
    design: torch.Tensor,
    *,
    method: str,
    nuisance: str | Regressor,
    resampling: Resampling,
    n_boot: int,
    alpha: float,
    seed: int,
    n_folds: int = 5,
    n_permutations: int = 2000,
) -> CellStatistics:
    """Estimates and bootstrap replicates of ``[raw, partial]`` correlations of each ``x`` column with ``y``.

    ``x`` is ``(n, M)``, ``y`` ``(n,)``, ``design`` ``(n, p)`` (numeric baselines and 0/1 dummies), all
    float64 on one device and validated by the caller; results stay on that device. Raises if the target
    is a linear function of the baselines.
    """
    n = x.shape[0]
    ranked = method == "spearman"
    xr = rankdata(x, dim=0) if ranked else x
    yr = rankdata(y) if ranked else y
    dr = rankdata(design, dim=0) if ranked and design.shape[1] > 0 else design
    lin_x = linear_residuals(xr, dr)
    lin_y = linear_residuals(yr[:, None], dr)[:, 0]
    if bool(_in_span(yr[:, None], lin_y[:, None]).any()):
        raise ValueError(
            "the target is (after ranking) a linear function of the baselines: nothing is left for a metric "
            "to explain; check the target and baseline columns"
        )
    explained = _in_span(xr, lin_x)
    clusters = resampling.clusters(n)
    clusters = None if clusters is None else clusters.to(x.device)
    crossfit = nuisance != "linear"
    if crossfit:
        resid = crossfit_residuals(
            torch.cat([xr, yr[:, None]], dim=1),
            dr,
            regressor=nuisance,  # type: ignore[arg-type]
            n_folds=n_folds,
            seed=seed,
            groups=clusters,
        )
        ex, ey = resid[:, :-1], resid[:, -1]
    else:
        ex, ey = lin_x, lin_y
    stat = _Statistic(method, crossfit, explained)
    if clusters is None:
        # Rows are drawn by paired_bootstrap_ci; the statistic turns each resample's row indices into
        # counts and evaluates on the shared data with those weights (same numbers, no per-resample sort).
        def from_indices(idx: torch.Tensor) -> torch.Tensor:
            rows = idx.long()
            counts = torch.zeros(rows.shape, dtype=torch.float64, device=rows.device).scatter_add_(
                1, rows, torch.ones(rows.shape, dtype=torch.float64, device=rows.device)
            )
            return stat(x[None], y[None], design[None], ex[None], ey[None], counts)

        boot = paired_bootstrap_ci(
            from_indices,
            torch.arange(n, dtype=torch.float64, device=x.device),
            n_boot=n_boot,
            alpha=alpha,
            seed=seed,
        )
    else:
        boot = cluster_bootstrap(
            stat, x, y, design, ex, ey, clusters=clusters, n_boot=n_boot, alpha=alpha, seed=seed
        )
    perm_p = None
    if resampling.block_size is not None:
        p_values = []
        for j in range(x.shape[1]):
            if bool(explained[j]):
                p_values.append(1.0)
                continue
            res = permutation_test(
                pearson,
                ex[:, j],
                ey,
                n_permutations=n_permutations,
                seed=seed,
                block_size=resampling.block_size,
            )
            p_values.append(res.p_value)
        perm_p = torch.tensor(p_values, dtype=torch.float64, device=x.device)
    return CellStatistics(
        estimate=boot.estimate,
        distribution=boot.distribution,
        explained=explained,
        degenerate=stat.degenerate,
        permutation_p=perm_p,
        metric_residuals=ex,
        target_residuals=ey,
        design_columns=design.shape[1],
    )
