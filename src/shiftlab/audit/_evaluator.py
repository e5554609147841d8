"""``MBEEvaluator``: is a training metric real signal beyond trivial baselines, or a disguised loss proxy?"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from shiftlab.audit._config import MBEConfig
from shiftlab.audit._decide import cell_rows, classify_rows, sanity_check
from shiftlab.audit._engine import CellStatistics, Resampling, cell_statistics, check_clusters
from shiftlab.audit._inputs import (
    MIN_RUNS,
    Baseline,
    as_labels,
    as_numeric,
    build_design,
    parse_resampling,
    sanity_columns,
)
from shiftlab.audit._report import MBEReport, PlotData
from shiftlab.audit._verdict import LadderStep, MetricVerdict
from shiftlab.functional.crossfit import Regressor
from shiftlab.functional.equivalence import bootstrap_interval

__all__ = ["MBEEvaluator"]

Cell = tuple[str, npt.NDArray[np.bool_], list[Baseline]]


class MBEEvaluator:
    """Marginal Baseline Evaluation of one or more metrics against a target, given a baseline ladder.

    Parameters
    ----------
    metric_name
        Name of the audited metric, or names of several (one column of ``metric`` each).
    baseline_names
        Names of the baselines (controls), in the order of the columns of ``baselines``: numeric
        (early validation loss, learning rate) or categorical (architecture, optimizer) when ``baselines``
        is a mapping. With two or more, the report also climbs the ladder: the partial correlation given
        the first one, the first two, ..., all of them.
    config
        Thresholds and resampling settings (:class:`MBEConfig`).
    regressor
        Optional callable nuisance model ``(z_train, y_train, z_test) -> predictions`` for cross-fitted
        partial correlations; overrides ``config.nuisance``.
    device
        Where the resampling runs (``"cuda"`` for large audits); random draws are made on the CPU, so
        the report is the same on every device up to floating-point round-off.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> loss = torch.randn(200, generator=g, dtype=torch.float64)
    >>> acc = -loss + 0.5 * torch.randn(200, generator=g, dtype=torch.float64)
    >>> proxy = loss + 0.3 * torch.randn(200, generator=g, dtype=torch.float64)
    >>> report = MBEEvaluator("proxy", ["val_loss"], config=MBEConfig(n_boot=500)).evaluate(proxy, loss, acc)
    >>> report.verdict("proxy").verdict.value  # 200 runs cannot show |partial rho| < 0.1
    'inconclusive'
    >>> report.verdict("baseline val_loss").verdict.value, report.sanity_passed
    ('loss proxy', True)
    """

    def __init__(
        self,
        metric_name: str | Sequence[str],
        baseline_names: str | Sequence[str],
        *,
        config: MBEConfig | None = None,
        regressor: Regressor | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.metric_names = (metric_name,) if isinstance(metric_name, str) else tuple(metric_name)
        self.baseline_names = (baseline_names,) if isinstance(baseline_names, str) else tuple(baseline_names)
        self.config = config if config is not None else MBEConfig()
        self.regressor = regressor
        self.device = torch.device(device)

    def evaluate(
        self,
        metric: Any,
        baselines: Any,
        target: Any,
        *,
        target_name: str = "target",
        units: Any = None,
        groups: Any = None,
        group_name: str = "group",
        block_size: int | None = None,
    ) -> MBEReport:
        r"""Audit the metric(s): raw and partial correlation with CIs, TOST, class, sanity controls.

        Parameters
        ----------
        metric
            Shape ``(n,)`` or ``(n, M)``, one column per name in ``metric_name``.
        baselines
            Shape ``(n,)`` / ``(n, k)`` numeric, or a mapping from each baseline name to its column
            (labels allowed: one-hot encoded, first level dropped).
        target
            Shape ``(n,)``, e.g. final test accuracy.
        target_name
            Name of the target in the report.
        units
            Optional ``(n,)`` inference-unit labels: runs that share a unit and are therefore dependent
            (checkpoints of one run, runs sharing a seed and data order) are resampled together (cluster
            bootstrap) and kept in one cross-fitting fold. At least 5 units per cell; below 20 the report
            calls the intervals approximate.
        groups
            Optional ``(n,)`` labels: each group is audited on its own, and the pooled audit adds the group
            as a categorical control (unless it is already a baseline). Benjamini-Hochberg runs across all
            metrics x (pooled + groups).
        group_name
            Name of the grouping variable in the report.
        block_size
            Rows are consecutive steps of one training log: resample contiguous blocks of this length and
            take the p-value of the partial correlation from a block permutation test.

        Returns
        -------
        MBEReport

        Raises
        ------
        ValueError, TypeError
            Before any work: non-finite values, constant columns, fewer than 5 runs (or ``n <= k + 3``) in
            any cell, mismatched lengths, bad names, fewer than 5 units or blocks (in any cell).
        """
        cfg = self.config
        self._check_names(target_name, group_name)
        x = as_numeric(metric, "metric")
        x = x[:, None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != len(self.metric_names):
            raise ValueError(
                f"metric must have shape (n, {len(self.metric_names)}) for {self.metric_names}; got {x.shape}"
            )
        n = x.shape[0]
        if n < MIN_RUNS:
            raise ValueError(f"the audit needs at least {MIN_RUNS} runs; got {n}")
        y = as_numeric(target, "target")
        if y.shape != (n,):
            raise ValueError(f"target must have shape ({n},) like the metric; got {y.shape}")
        if np.all(y == y[0]):
            raise ValueError(f"target {target_name!r} is constant: nothing to predict")
        for j, name in enumerate(self.metric_names):
            if np.all(x[:, j] == x[0, j]):
                raise ValueError(f"metric {name!r} is constant: its correlation with anything is undefined")
        base = self._baselines(baselines, n)
        resampling = parse_resampling(units, block_size, n)
        labels = None if groups is None else as_labels(groups, group_name, n)

        pooled = base
        if labels is not None and group_name not in self.baseline_names:
            pooled = [*base, Baseline(group_name, labels)]
        cells: list[Cell] = [("all", np.ones(n, dtype=bool), pooled)]
        if labels is not None:
            cells += [(f"{group_name}={g}", labels == g, base) for g in sorted(set(labels.tolist()))]
        designs = [self._prepare_cell(name, rows, bases, x, resampling) for name, rows, bases in cells]

        m = len(self.metric_names)
        control_x, control_names = (
            sanity_columns(x, self.metric_names[0], base, cfg.seed) if cfg.sanity_controls else (x[:, :0], [])
        )
        results: list[MetricVerdict] = []
        controls: list[MetricVerdict] = []
        evaluated = []
        for (name, rows, _), (design, used, dropped) in zip(cells, designs, strict=True):
            pooled_cell = name == "all"  # the first cell; it alone carries the sanity controls
            xc = np.concatenate([x, control_x], axis=1) if pooled_cell else x
            sub = Resampling(
                units=None if resampling.units is None else resampling.units[torch.as_tensor(rows)],
                block_size=resampling.block_size,
            )
            stats = self._statistics(xc[rows], y[rows], design, sub)
            evaluated.append(stats)
            names = [*self.metric_names, *control_names] if pooled_cell else list(self.metric_names)
            inference = sub.describe(int(rows.sum()))
            cell = cell_rows(
                stats, names, m, group=name, used=used, dropped=dropped, inference=inference, config=cfg
            )
            results += cell[:m]
            controls += cell[m:]
        plot = PlotData(
            metric_names=self.metric_names,
            metric=x,
            target=y,
            metric_residuals=evaluated[0].metric_residuals[:, :m].cpu().numpy(),
            target_residuals=evaluated[0].target_residuals.cpu().numpy(),
            ranked=cfg.method == "spearman",
        )
        controls = classify_rows(controls, cfg, adjust=False)
        passed, notes = sanity_check(controls)
        return MBEReport(
            target=target_name,
            baselines=self.baseline_names,
            n=n,
            config=cfg,
            results=tuple(classify_rows(results, cfg, adjust=True)),
            controls=tuple(controls),
            ladder=self._ladder(x, y, pooled, resampling),
            sanity_passed=passed,
            sanity_notes=tuple(notes),
            plot=plot,
        )

    # ------------------------------------------------------------------------------------------------------
    def _statistics(
        self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], design: torch.Tensor, sub: Resampling
    ) -> CellStatistics:
        cfg = self.config
        return cell_statistics(
            torch.as_tensor(x, device=self.device),
            torch.as_tensor(y, device=self.device),
            design.to(self.device),
            method=cfg.method,
            nuisance=self.regressor if self.regressor is not None else cfg.nuisance,
            resampling=sub,
            n_boot=cfg.n_boot,
            alpha=cfg.alpha,
            seed=cfg.seed,
            n_folds=cfg.n_folds,
            n_permutations=cfg.n_permutations,
        )

    def _ladder(
        self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], pooled: list[Baseline], sub: Resampling
    ) -> tuple[LadderStep, ...]:
        """Partial correlation of each metric given the first 0, 1, ..., k baselines (pooled runs)."""
        if len(pooled) < 2:
            return ()
        steps = []
        everything = np.ones(len(y), dtype=bool)
        for rung in range(len(pooled) + 1):
            design, used, _ = build_design(pooled[:rung], everything)
            stats = self._statistics(x, y, design, sub)
            low, high = bootstrap_interval(stats.distribution[:, 1], self.config.alpha)
            steps += [
                LadderStep(name, tuple(used), float(stats.estimate[1, j]), float(low[j]), float(high[j]))
                for j, name in enumerate(self.metric_names)
            ]
        return tuple(sorted(steps, key=lambda s: self.metric_names.index(s.metric)))

    def _check_names(self, target_name: str, group_name: str) -> None:
        if not self.metric_names:
            raise ValueError("metric_name must name at least one metric")
        names = [*self.metric_names, *self.baseline_names, target_name]
        duplicates = sorted({v for v in names if names.count(v) > 1})
        if duplicates:
            raise ValueError(f"metric, baseline and target names must be distinct; repeated: {duplicates}")
        if not isinstance(self.config, MBEConfig):
            raise TypeError(f"config must be an MBEConfig; got {type(self.config).__name__}")
        if not group_name:
            raise ValueError("group_name must be a non-empty string")

    def _baselines(self, baselines: Any, n: int) -> list[Baseline]:
        if isinstance(baselines, Mapping):
            missing = [b for b in self.baseline_names if b not in baselines]
            if missing:
                raise ValueError(
                    f"baselines has no column(s) {missing}; it has: {sorted(map(str, baselines))}"
                )
            out = []
            for name in self.baseline_names:
                arr = np.asarray(baselines[name])
                if arr.ndim != 1 or arr.shape[0] != n:
                    raise ValueError(f"baseline {name!r} must have {n} values; got shape {arr.shape}")
                numeric = arr.dtype != object and (
                    np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
                )
                values = as_numeric(arr, f"baseline {name!r}") if numeric else as_labels(arr, name, n)
                out.append(Baseline(name, values))
        else:
            arr = as_numeric(baselines, "baselines")
            arr = arr[:, None] if arr.ndim == 1 else arr
            if arr.ndim != 2 or arr.shape[0] != n:
                raise ValueError(f"baselines must have shape ({n},) or ({n}, k); got {arr.shape}")
            if arr.shape[1] != len(self.baseline_names):
                count = len(self.baseline_names)
                raise ValueError(f"baselines has {arr.shape[1]} column(s) but baseline_names has {count}")
            out = [Baseline(name, arr[:, j]) for j, name in enumerate(self.baseline_names)]
        for b in out:
            if b.numeric and np.all(b.values == b.values[0]):
                raise ValueError(f"baseline {b.name!r} is constant: it cannot control for anything; drop it")
            if not b.numeric and len(set(b.values.tolist())) < 2:
                raise ValueError(f"categorical baseline {b.name!r} has a single level; drop it")
        return out

    def _prepare_cell(
        self,
        name: str,
        rows: npt.NDArray[np.bool_],
        bases: list[Baseline],
        x: npt.NDArray[np.float64],
        resampling: Resampling,
    ) -> tuple[torch.Tensor, list[str], list[str]]:
        design, used, dropped = build_design(bases, rows)
        n_cell, p = int(rows.sum()), design.shape[1]
        if n_cell < MIN_RUNS or n_cell <= p + 3:
            raise ValueError(
                f"cell {name!r} has {n_cell} runs for {p} control column(s); each cell needs at least "
                f"{max(MIN_RUNS, p + 4)}: merge small groups or drop the grouping"
            )
        if name != "all":
            for j, metric in enumerate(self.metric_names):
                if np.all(x[rows, j] == x[rows, j][0]):
                    raise ValueError(f"metric {metric!r} is constant within {name!r}")
        if resampling.units is not None:
            check_clusters(resampling.units[torch.as_tensor(rows)], f"cell {name!r}")
        folds = self.config.n_folds
        crossfit = self.regressor is not None or self.config.nuisance != "linear"
        if crossfit and n_cell < 3 * folds:
            raise ValueError(
                f"cell {name!r} has {n_cell} runs: cross-fitting with n_folds={folds} needs at least "
                f"{3 * folds}"
            )
        if crossfit and resampling.units is not None:
            count = int(torch.unique(resampling.units[torch.as_tensor(rows)]).numel())
            if count < folds:
                raise ValueError(
                    f"cell {name!r} has {count} units, fewer than n_folds={folds} for cross-fitting"
                )
        return design, used, dropped
