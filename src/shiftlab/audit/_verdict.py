"""Verdicts from interval bounds: signal, loss proxy, or inconclusive, each with a sentence of diagnosis."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["LadderStep", "MetricVerdict", "Verdict", "classify", "diagnose"]


class Verdict(str, enum.Enum):
    """The class of a metric given the baselines."""

    SIGNAL = "signal"
    """The partial-correlation interval excludes 0 (after Benjamini-Hochberg across metrics x groups)."""
    LOSS_PROXY = "loss proxy"
    """Raw association, and the partial correlation shown to lie inside ``±delta`` (TOST)."""
    INCONCLUSIVE = "inconclusive"
    """Neither: the data cannot tell; the minimum detectable effect says what was ruled out."""


@dataclass(frozen=True)
class MetricVerdict:
    """One row of the audit: a metric (or sanity control) in one group, with every number behind its class.

    Correlations are Spearman unless the configuration says Pearson; intervals are bootstrap percentile
    intervals at level ``1 - alpha`` (``equivalence_ci_*`` at ``1 - 2 alpha``, the TOST interval);
    ``*_q`` are Benjamini-Hochberg adjusted across the audited metrics x groups (for controls, ``q = p``).
    ``degenerate_resamples`` counts resamples where the partial correlation was undefined (counted as 0).
    """

    metric: str
    group: str
    role: str
    n: int
    controls: tuple[str, ...]
    dropped_controls: tuple[str, ...]
    inference: str
    raw_r: float
    raw_ci_low: float
    raw_ci_high: float
    raw_p: float
    partial_r: float
    partial_ci_low: float
    partial_ci_high: float
    partial_p: float
    partial_q: float
    equivalence_ci_low: float
    equivalence_ci_high: float
    tost_p: float
    tost_q: float
    mde: float
    runs_for_equivalence: int
    explained_by_baselines: bool
    degenerate_resamples: int
    verdict: Verdict
    diagnosis: str


@dataclass(frozen=True)
class LadderStep:
    """The partial correlation of ``metric`` given the first few baselines (``controls``), with its CI."""

    metric: str
    controls: tuple[str, ...]
    partial_r: float
    ci_low: float
    ci_high: float


def classify(
    *,
    raw_ci: tuple[float, float],
    partial_ci: tuple[float, float],
    partial_q: float,
    tost_q: float,
    alpha: float,
) -> Verdict:
    """Decide the class from interval bounds and adjusted p-values.

    - signal: ``partial_ci`` excludes 0 and ``partial_q <= alpha``;
    - loss proxy: not signal, ``raw_ci`` excludes 0, and ``tost_q <= alpha`` (the ``1 - 2 alpha`` interval
      of the partial correlation lies inside ``±delta``);
    - inconclusive: otherwise. A weak genuine signal at small ``n`` lands here, never in loss proxy,
      because its interval is too wide to fit inside ``±delta``.

    Examples
    --------
    >>> classify(raw_ci=(0.5, 0.8), partial_ci=(-0.2, 0.6), partial_q=0.3, tost_q=0.6, alpha=0.05)
    <Verdict.INCONCLUSIVE: 'inconclusive'>
    >>> classify(raw_ci=(0.5, 0.8), partial_ci=(-0.04, 0.05), partial_q=0.8, tost_q=0.001, alpha=0.05)
    <Verdict.LOSS_PROXY: 'loss proxy'>
    """
    excludes_zero = partial_ci[0] > 0 or partial_ci[1] < 0
    if excludes_zero and partial_q <= alpha:
        return Verdict.SIGNAL
    raw_signal = raw_ci[0] > 0 or raw_ci[1] < 0
    if raw_signal and tost_q <= alpha:
        return Verdict.LOSS_PROXY
    return Verdict.INCONCLUSIVE


def _ci(low: float, high: float) -> str:
    return f"[{low:+.2f}, {high:+.2f}]"


def diagnose(
    row: MetricVerdict, *, alpha: float, delta: float, power: float, n_boot: int | None = None
) -> str:
    """One sentence saying why ``row`` got its class and what would change it.

    When more than 1% of the ``n_boot`` resamples were degenerate, a second sentence says so.

    Examples
    --------
    >>> row = MetricVerdict(
    ...     metric="m", group="all", role="metric", n=30, controls=("val_loss",), dropped_controls=(),
    ...     inference="bootstrap over runs", raw_r=-0.8, raw_ci_low=-0.9, raw_ci_high=-0.6, raw_p=0.001,
    ...     partial_r=0.3, partial_ci_low=-0.05, partial_ci_high=0.6, partial_p=0.09, partial_q=0.09,
    ...     equivalence_ci_low=0.01, equivalence_ci_high=0.55, tost_p=0.9, tost_q=0.9, mde=0.5,
    ...     runs_for_equivalence=855, explained_by_baselines=False, degenerate_resamples=0,
    ...     verdict=Verdict.INCONCLUSIVE, diagnosis="")
    >>> diagnose(row, alpha=0.05, delta=0.1, power=0.8)[:60]
    'partial rho = +0.30 [-0.05, +0.60] given val_loss neither ex'
    """
    reason = _reason(row, alpha=alpha, delta=delta, power=power)
    if n_boot is not None and row.degenerate_resamples > 0.01 * n_boot:
        reason += (
            f" {row.degenerate_resamples} of {n_boot} resamples were degenerate (a correlation undefined "
            "among the drawn runs) and counted as 0: the interval is approximate; collect more runs."
        )
    return reason


def _reason(row: MetricVerdict, *, alpha: float, delta: float, power: float) -> str:
    given = ", ".join(row.controls) if row.controls else "nothing"
    interval = _ci(row.partial_ci_low, row.partial_ci_high)
    partial = f"partial rho = {row.partial_r:+.2f} {interval} given {given}"
    raw = f"raw rho = {row.raw_r:+.2f} {_ci(row.raw_ci_low, row.raw_ci_high)}"
    if row.verdict is Verdict.SIGNAL:
        return f"{partial}: the metric carries signal beyond the baselines (q = {row.partial_q:.3g})."
    if row.verdict is Verdict.LOSS_PROXY:
        if row.explained_by_baselines:
            return (
                f"{raw}, but the metric is (after ranking) a linear function of {given}: it adds nothing "
                "beyond them."
            )
        eq = _ci(row.equivalence_ci_low, row.equivalence_ci_high)
        return (
            f"{raw}, but partial rho = {row.partial_r:+.2f} with {1 - 2 * alpha:.0%} interval {eq} inside "
            f"±{delta:g} (TOST q = {row.tost_q:.3g}): a disguised loss proxy."
        )
    detect = (
        f"at n = {row.n} only |rho| >= {row.mde:.2f} is detectable with {power:.0%} power, and about "
        f"{row.runs_for_equivalence} independent runs would be needed to show |rho| < {delta:g}"
    )
    excludes_zero = row.partial_ci_low > 0 or row.partial_ci_high < 0
    if excludes_zero:
        return f"{partial} excludes 0, but not after Benjamini-Hochberg (q = {row.partial_q:.3g}); {detect}."
    inside = -delta < row.equivalence_ci_low and row.equivalence_ci_high < delta
    if inside:
        return f"{raw} and {partial}: no signal at all, raw or partial."
    return f"{partial} neither excludes 0 nor lies inside ±{delta:g}; {detect}."
