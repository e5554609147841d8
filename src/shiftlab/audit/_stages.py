"""The four stages of the protocol as functions over a runs table, and ``audit_runs`` (stage 3 on a table).

1. :func:`acid_test`: when a driver that should change generalisation is varied (capacity, label noise,
   data size), the target and the metric must both move, and in a consistent direction.
2. :func:`architecture_harness`: the acid test again within each architecture (BatchNorm, LayerNorm, ...).
3. :func:`baseline_control` / :func:`audit_runs`: the metric's partial correlation with the target given
   the trivial baselines (:class:`~shiftlab.audit.MBEEvaluator`).
4. :func:`init_probe`: at initialisation, where the loss cannot discriminate between runs, does the metric
   predict the final target?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from shiftlab.audit._config import MBEConfig
from shiftlab.audit._engine import Resampling, cell_statistics, check_clusters
from shiftlab.audit._evaluator import MBEEvaluator
from shiftlab.audit._report import MBEReport
from shiftlab.audit._table import RunsTable, as_runs_table
from shiftlab.functional.equivalence import bootstrap_interval
from shiftlab.report import Report, Table

__all__ = ["StageReport", "acid_test", "architecture_harness", "audit_runs", "baseline_control", "init_probe"]


@dataclass(frozen=True)
class StageReport(Report):
    """Result of one protocol stage: pass / fail (``None`` when the stage cannot decide) and its table."""

    kind: ClassVar[str] = "audit_stage"

    stage: str
    metric: str
    target: str
    passed: bool | None
    summary: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def headline(self) -> str:
        state = {True: "PASS", False: "FAIL", None: "UNDECIDED"}[self.passed]
        return f"{self.stage} of {self.metric} ({self.target}): {state}. {self.summary}"

    def tables(self) -> Sequence[Table]:
        return (Table(self.stage, self.columns, self.rows),)


def _ci_text(r: float, low: float, high: float) -> str:
    return f"{r:+.2f} [{low:+.2f}, {high:+.2f}]"


def _resampling(table: RunsTable, unit: str | None) -> Resampling:
    if unit is None:
        return Resampling()
    _, codes = np.unique(table.labels(unit), return_inverse=True)
    tensor = torch.as_tensor(codes.astype(np.int64))
    check_clusters(tensor, f"unit column {unit!r}")
    return Resampling(units=tensor)


def _correlations(
    table: RunsTable,
    xs: Sequence[str],
    y: str,
    controls: Sequence[str],
    unit: str | None,
    cfg: MBEConfig,
) -> list[tuple[float, float, float, float, float, float]]:
    """For each column in ``xs``: (raw r, low, high, partial r, low, high) with ``y`` given ``controls``."""
    for name in (*xs, y, *controls):
        col = table.numeric(name)
        if not np.isfinite(col).all():
            raise ValueError(f"column {name!r} has missing or non-finite values")
        if np.all(col == col[0]):
            raise ValueError(f"column {name!r} is constant in these runs")
    if table.n < 5 or table.n <= len(controls) + 3:
        raise ValueError(f"need at least {max(5, len(controls) + 4)} runs; got {table.n}")
    x = torch.as_tensor(np.column_stack([table.numeric(c) for c in xs]))
    design = torch.as_tensor(
        np.column_stack([table.numeric(c) for c in controls]) if controls else np.zeros((table.n, 0))
    )
    stats = cell_statistics(
        x,
        torch.as_tensor(table.numeric(y)),
        design,
        method=cfg.method,
        nuisance="linear",
        resampling=_resampling(table, unit),
        n_boot=cfg.n_boot,
        alpha=cfg.alpha,
        seed=cfg.seed,
    )
    raw_lo, raw_hi = bootstrap_interval(stats.distribution[:, 0], cfg.alpha)
    par_lo, par_hi = bootstrap_interval(stats.distribution[:, 1], cfg.alpha)
    return [
        (
            float(stats.estimate[0, j]),
            float(raw_lo[j]),
            float(raw_hi[j]),
            float(stats.estimate[1, j]),
            float(par_lo[j]),
            float(par_hi[j]),
        )
        for j in range(len(xs))
    ]


def _excludes_zero(low: float, high: float) -> bool:
    return low > 0 or high < 0


def acid_test(
    runs: Any,
    metric: str,
    target: str,
    drivers: Sequence[str],
    *,
    unit: str | None = None,
    expected_sign: int | None = None,
    config: MBEConfig | None = None,
) -> StageReport:
    r"""Stage 1: varying each driver must move both the target and the metric, in one consistent direction.

    For each driver :math:`d` (a numeric column such as width, label-noise rate or training-set size),
    with the other drivers as controls: :math:`\rho(d, \text{target})` and :math:`\rho(d, \text{metric})`
    with bootstrap CIs, and the direction it implies,
    :math:`s_d = \operatorname{sign}\rho(d, \text{metric}) \cdot \operatorname{sign}\rho(d, \text{target})`
    (+1: metric and target rise together). A driver whose target interval includes 0 cannot test the
    metric and is reported as uninformative. Fails when the target moves but the metric does not, or when
    the informative drivers imply different directions (or not ``expected_sign``); passes when every
    informative driver moves both in one direction; undecided (``passed=None``) when no driver moves the
    target.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> noise = np.repeat([0.0, 0.2, 0.4], 10)
    >>> acc = 0.9 - noise + 0.02 * rng.normal(size=30)
    >>> runs = {"noise": noise, "acc": acc, "m": noise + 0.05 * rng.normal(size=30)}
    >>> acid_test(runs, "m", "acc", ["noise"], config=MBEConfig(n_boot=400)).passed
    True
    """
    cfg = config if config is not None else MBEConfig()
    table = as_runs_table(runs)
    if not drivers:
        raise ValueError("acid_test needs at least one driver column")
    if expected_sign not in (None, -1, 1):
        raise ValueError(f"expected_sign must be -1, 1 or None; got {expected_sign!r}")
    rows = []
    signs: list[int] = []  # implied directions of the informative drivers
    metric_still: list[str] = []
    for d in drivers:
        others = [o for o in drivers if o != d]
        (*_, tp, tp_lo, tp_hi), (*_, mp, mp_lo, mp_hi) = _correlations(
            table, [target, metric], d, others, unit, cfg
        )
        sign = int(np.sign(tp) * np.sign(mp))
        if not _excludes_zero(tp_lo, tp_hi):
            outcome, direction = "uninformative: the target does not move", ""
        elif not _excludes_zero(mp_lo, mp_hi):
            outcome, direction = "FAIL: the metric does not move", ""
            metric_still.append(d)
        else:
            outcome, direction = "both move", "+" if sign > 0 else "-"
            signs.append(sign)
        rows.append((d, _ci_text(tp, tp_lo, tp_hi), _ci_text(mp, mp_lo, mp_hi), direction, outcome))
    passed: bool | None
    if metric_still:
        passed = False
        summary = f"{target} moves but {metric} does not under: {', '.join(metric_still)}."
    elif not signs:
        passed = None
        summary = f"no driver moves {target} beyond noise: the grid cannot test the metric."
    elif len(set(signs)) > 1:
        passed = False
        summary = "the drivers imply opposite directions for the metric-target relation."
    elif expected_sign is not None and signs[0] != expected_sign:
        passed = False
        summary = f"the metric moves against the expected direction ({expected_sign:+d})."
    else:
        passed = True
        direction = "+" if signs[0] > 0 else "-"
        summary = f"{metric} tracks {target} (direction {direction}) under every driver that moves it."
    if len(drivers) > 1:
        summary += " Each driver's correlations control for the other drivers."
    return StageReport(
        stage="acid test",
        metric=metric,
        target=target,
        passed=passed,
        summary=summary,
        columns=(
            "driver",
            f"rho(driver, {target}) [CI]",
            f"rho(driver, {metric}) [CI]",
            "direction",
            "outcome",
        ),
        rows=tuple(rows),
    )


def architecture_harness(
    runs: Any,
    metric: str,
    target: str,
    drivers: Sequence[str],
    architecture: str,
    *,
    unit: str | None = None,
    expected_sign: int | None = None,
    config: MBEConfig | None = None,
) -> StageReport:
    """Stage 2: the acid test within each architecture; passes when every one passes in one direction.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> noise = np.tile(np.repeat([0.0, 0.2, 0.4], 8), 2)
    >>> arch = np.repeat(["bn", "ln"], 24)
    >>> acc = 0.9 - noise + 0.02 * rng.normal(size=48)
    >>> runs = {"noise": noise, "arch": arch, "acc": acc, "m": noise + 0.05 * rng.normal(size=48)}
    >>> architecture_harness(runs, "m", "acc", ["noise"], "arch", config=MBEConfig(n_boot=400)).passed
    True
    """
    cfg = config if config is not None else MBEConfig()
    table = as_runs_table(runs)
    labels = table.labels(architecture)
    rows = []
    verdicts: list[bool | None] = []
    directions: set[str] = set()
    for level in sorted(set(labels.tolist())):
        sub = table.subset(labels == level)
        report = acid_test(sub, metric, target, drivers, unit=unit, expected_sign=expected_sign, config=cfg)
        ((r, lo, hi, *_),) = _correlations(sub, [metric], target, [], unit, cfg)
        direction = sorted({row[3] for row in report.rows if row[3]})
        verdicts.append(report.passed)
        directions.update(direction)
        state = {True: "pass", False: "fail", None: "undecided"}[report.passed]
        rows.append((level, sub.n, _ci_text(r, lo, hi), "/".join(direction), state))
    failing = [row[0] for row, v in zip(rows, verdicts, strict=True) if v is False]
    undecided = [row[0] for row, v in zip(rows, verdicts, strict=True) if v is None]
    passed: bool | None
    if failing:
        passed = False
        summary = f"the acid test fails in: {', '.join(failing)}."
    elif len(directions) > 1:
        passed = False
        summary = "architectures disagree on the direction of the metric-target relation."
    elif undecided:
        passed = None
        summary = f"no driver moves the target in: {', '.join(undecided)}; the others pass."
    else:
        passed = True
        summary = f"the acid test passes in every architecture ({len(rows)}) with one direction."
    return StageReport(
        stage="architecture harness",
        metric=metric,
        target=target,
        passed=passed,
        summary=summary,
        columns=(architecture, "runs", f"rho({metric}, {target}) [CI]", "direction", "acid test"),
        rows=tuple(rows),
    )


def audit_runs(
    runs: Any,
    metrics: str | Sequence[str],
    target: str,
    baselines: str | Sequence[str],
    *,
    group: str | None = None,
    unit: str | None = None,
    block_size: int | None = None,
    config: MBEConfig | None = None,
) -> MBEReport:
    """Run :class:`MBEEvaluator` on columns of a runs table (a CSV path, mapping, data frame or table).

    Unknown column names raise and list the table's columns. Categorical baseline columns become
    one-hot controls.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> loss = rng.normal(size=40)
    >>> runs = {"val_loss": loss, "acc": -loss + rng.normal(size=40), "m": rng.normal(size=40)}
    >>> audit_runs(runs, "m", "acc", "val_loss", config=MBEConfig(n_boot=400)).results[0].metric
    'm'
    """
    table = as_runs_table(runs)
    metric_names = [metrics] if isinstance(metrics, str) else list(metrics)
    baseline_names = [baselines] if isinstance(baselines, str) else list(baselines)
    for name in (*metric_names, target, *baseline_names, *(c for c in (group, unit) if c is not None)):
        table.labels(name)  # raises for an unknown column, listing the known ones
    x = np.column_stack([table.numeric(m) for m in metric_names])
    base = {b: table.numeric(b) if table.is_numeric(b) else table.labels(b) for b in baseline_names}
    evaluator = MBEEvaluator(metric_names, baseline_names, config=config)
    return evaluator.evaluate(
        x,
        base,
        table.numeric(target),
        target_name=target,
        units=None if unit is None else table.labels(unit),
        groups=None if group is None else table.labels(group),
        group_name=group or "group",
        block_size=block_size,
    )


def baseline_control(
    runs: Any,
    metrics: str | Sequence[str],
    target: str,
    baselines: str | Sequence[str],
    *,
    group: str | None = None,
    unit: str | None = None,
    config: MBEConfig | None = None,
) -> MBEReport:
    """Stage 3: the baseline control, :func:`audit_runs` under the protocol's name.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> loss = rng.normal(size=40)
    >>> runs = {"val_loss": loss, "acc": -loss + rng.normal(size=40), "m": loss + rng.normal(size=40)}
    >>> baseline_control(runs, "m", "acc", "val_loss", config=MBEConfig(n_boot=400)).kind
    'metric_audit'
    """
    return audit_runs(runs, metrics, target, baselines, group=group, unit=unit, config=config)


def init_probe(
    runs: Any,
    metric: str,
    target: str,
    init_loss: str,
    *,
    unit: str | None = None,
    config: MBEConfig | None = None,
) -> StageReport:
    r"""Stage 4: does the metric measured at initialisation predict the final target beyond the initial loss?

    At initialisation every run sits near the same loss (:math:`\log C` for :math:`C` classes), so the loss
    baseline cannot discriminate; an association of the metric at init with the final target is then
    information the loss does not carry. Reports :math:`\rho(\text{loss@init}, \text{target})`,
    :math:`\rho(\text{metric@init}, \text{target})` and the latter given the loss at init. Passes when the
    partial interval excludes 0; when the loss at init does discriminate (its interval excludes 0) the
    summary says so, since the probe's premise does not hold.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> loss0 = 2.3 + 0.01 * rng.normal(size=40)
    >>> acc = rng.normal(size=40)
    >>> runs = {"loss0": loss0, "acc": acc, "m0": rng.normal(size=40)}
    >>> init_probe(runs, "m0", "acc", "loss0", config=MBEConfig(n_boot=400)).passed
    False
    """
    cfg = config if config is not None else MBEConfig()
    table = as_runs_table(runs)
    (l_r, l_lo, l_hi, *_), (m_r, m_lo, m_hi, mp, mp_lo, mp_hi) = _correlations(
        table, [init_loss, metric], target, [init_loss], unit, cfg
    )
    beyond = _excludes_zero(mp_lo, mp_hi)
    loss_discriminates = _excludes_zero(l_lo, l_hi)
    summary = (
        f"{metric} at init {'predicts' if beyond else 'does not predict'} {target} beyond the loss at init "
        f"(partial rho = {_ci_text(mp, mp_lo, mp_hi)})."
    )
    if loss_discriminates:
        summary += " Note: the loss at init does discriminate here, so the probe's premise does not hold."
    rows = (
        (f"{init_loss} (baseline)", _ci_text(l_r, l_lo, l_hi)),
        (metric, _ci_text(m_r, m_lo, m_hi)),
        (f"{metric} given {init_loss}", _ci_text(mp, mp_lo, mp_hi)),
    )
    return StageReport(
        stage="init probe",
        metric=metric,
        target=target,
        passed=beyond,
        summary=summary,
        columns=("quantity", f"rho with {target} [CI]"),
        rows=rows,
    )
