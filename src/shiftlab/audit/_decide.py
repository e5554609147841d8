"""From bootstrap replicates to verdicts: intervals, p-values, TOST, MDE, BH, sanity checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from shiftlab.audit._config import MBEConfig
from shiftlab.audit._engine import CellStatistics
from shiftlab.audit._verdict import MetricVerdict, Verdict, classify, diagnose
from shiftlab.functional.equivalence import (
    bootstrap_interval,
    bootstrap_p_value,
    bootstrap_tost,
    equivalence_sample_size,
)
from shiftlab.functional.fdr import benjamini_hochberg

__all__ = ["cell_rows", "classify_rows", "sanity_check"]


def _quantile(q: float) -> float:
    return float(torch.special.ndtri(torch.tensor(q, dtype=torch.float64)))


def cell_rows(
    stats: CellStatistics,
    names: Sequence[str],
    n_metrics: int,
    *,
    group: str,
    used: Sequence[str],
    dropped: Sequence[str],
    inference: str,
    config: MBEConfig,
) -> list[MetricVerdict]:
    r"""One unclassified row per column of a cell (the first ``n_metrics`` are metrics, the rest controls).

    Intervals are bootstrap percentiles (:math:`1 - \alpha`; the TOST interval :math:`1 - 2\alpha`), the
    p-value of "partial = 0" inverts the percentile interval (or comes from the block permutation test of
    a series), and the minimum detectable effect uses the bootstrap standard error of
    :math:`z = \operatorname{artanh} r`: :math:`\mathrm{MDE} = \tanh\big((z_{1-\alpha/2} +
    z_{\text{power}})\, \mathrm{sd}^*(z)\big)`, which accounts for clusters, ranks and cross-fitting.
    """
    cfg = config
    dist = stats.distribution
    n = stats.metric_residuals.shape[0]
    raw_lo, raw_hi = bootstrap_interval(dist[:, 0], cfg.alpha)
    par_lo, par_hi = bootstrap_interval(dist[:, 1], cfg.alpha)
    eq_lo, eq_hi = bootstrap_interval(dist[:, 1], 2 * cfg.alpha)
    raw_p = bootstrap_p_value(dist[:, 0])
    par_p = stats.permutation_p if stats.permutation_p is not None else bootstrap_p_value(dist[:, 1])
    tost_p = bootstrap_tost(dist[:, 1], cfg.delta).p_value
    z = torch.atanh(dist[:, 1].clamp(-1 + 1e-12, 1 - 1e-12))
    mde = torch.tanh((_quantile(1 - cfg.alpha / 2) + _quantile(cfg.power)) * z.std(dim=0))
    k = int(stats.design_columns)
    runs_eq = equivalence_sample_size(cfg.delta, k=k, alpha=cfg.alpha, power=cfg.power)
    return [
        MetricVerdict(
            metric=name,
            group=group,
            role="metric" if j < n_metrics else "control",
            n=n,
            controls=tuple(used),
            dropped_controls=tuple(dropped),
            inference=inference,
            raw_r=float(stats.estimate[0, j]),
            raw_ci_low=float(raw_lo[j]),
            raw_ci_high=float(raw_hi[j]),
            raw_p=float(raw_p[j]),
            partial_r=float(stats.estimate[1, j]),
            partial_ci_low=float(par_lo[j]),
            partial_ci_high=float(par_hi[j]),
            partial_p=float(par_p[j]),
            partial_q=float(par_p[j]),
            equivalence_ci_low=float(eq_lo[j]),
            equivalence_ci_high=float(eq_hi[j]),
            tost_p=float(tost_p[j]),
            tost_q=float(tost_p[j]),
            mde=float(mde[j]),
            runs_for_equivalence=runs_eq,
            explained_by_baselines=bool(stats.explained[j]),
            degenerate_resamples=int(stats.degenerate[1, j]),
            verdict=Verdict.INCONCLUSIVE,
            diagnosis="",
        )
        for j, name in enumerate(names)
    ]


def classify_rows(rows: Sequence[MetricVerdict], config: MBEConfig, *, adjust: bool) -> list[MetricVerdict]:
    """Benjamini-Hochberg across ``rows`` (when ``adjust``: signal and TOST p-values, two families), then
    the class and the diagnosis of each row."""
    if not rows:
        return []
    cfg = config
    out = list(rows)
    if adjust:
        q_signal = benjamini_hochberg([r.partial_p for r in out], cfg.alpha).adjusted.tolist()
        q_tost = benjamini_hochberg([r.tost_p for r in out], cfg.alpha).adjusted.tolist()
        out = [replace(r, partial_q=qs, tost_q=qt) for r, qs, qt in zip(out, q_signal, q_tost, strict=True)]
    classified = []
    for r in out:
        verdict = classify(
            raw_ci=(r.raw_ci_low, r.raw_ci_high),
            partial_ci=(r.partial_ci_low, r.partial_ci_high),
            partial_q=r.partial_q,
            tost_q=r.tost_q,
            alpha=cfg.alpha,
        )
        r = replace(r, verdict=verdict)
        reason = diagnose(r, alpha=cfg.alpha, delta=cfg.delta, power=cfg.power, n_boot=cfg.n_boot)
        classified.append(replace(r, diagnosis=reason))
    return classified


def sanity_check(controls: Sequence[MetricVerdict]) -> tuple[bool, list[str]]:
    """Random and permuted metrics must not come out as signal; the baseline itself must be a proxy.

    A baseline that has no raw association with the target cannot show anything as a metric: that control
    is reported as uninformative, not failed.
    """
    passed = True
    notes: list[str] = []
    for c in controls:
        if c.metric.startswith("baseline "):
            raw_signal = c.raw_ci_low > 0 or c.raw_ci_high < 0
            if c.verdict is Verdict.LOSS_PROXY:
                notes.append(f"{c.metric} as a metric: loss proxy, as it must be.")
            elif not raw_signal:
                notes.append(
                    f"{c.metric} as a metric has no raw association with the target (raw rho = "
                    f"{c.raw_r:+.2f}): the baseline does not predict the target, so this control is "
                    "uninformative."
                )
            else:
                passed = False
                notes.append(f"{c.metric} as a metric came out {c.verdict.value}, not loss proxy.")
        elif c.verdict is Verdict.SIGNAL:
            passed = False
            notes.append(f"{c.metric} came out as signal (partial rho = {c.partial_r:+.2f}): false positive.")
        else:
            notes.append(f"{c.metric}: {c.verdict.value}, as expected for a metric without signal.")
    return passed, notes
