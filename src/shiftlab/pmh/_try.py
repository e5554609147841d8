"""``try_pmh``: one call from "train on site A, deploy on site B" to a SHIP / DO NOT SHIP report.

It checks applicability on the data, picks the estimator (labelled ``domain`` when the target pool has
labels, label-free moments otherwise), runs every arm over K seeds with :func:`run_arms`, and decides with
:func:`ship_verdict` on the declared selection split (and reports the other split's verdict beside it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from shiftlab.pmh._applicability import check_applicability
from shiftlab.pmh._arms import run_arms
from shiftlab.pmh._arms_data import ArmsData
from shiftlab.pmh._arms_result import ArmsResult
from shiftlab.pmh._deploy_metric import DeployMetric
from shiftlab.pmh._estimators import eigengap_check
from shiftlab.pmh._train_config import TrainConfig
from shiftlab.pmh._verdict import ShipVerdict, VerdictConfig, ship_verdict
from shiftlab.report import Report, Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclasses.dataclass(frozen=True)
class PMHReport(Report):
    """What the gate decided and why: applicability, Σ, every arm × seed, a verdict per selection split."""

    kind: ClassVar[str] = "pmh_try"

    verdict: ShipVerdict
    other_verdicts: Mapping[str, ShipVerdict]
    selection: str
    applicability: str
    applicability_reasons: tuple[str, ...]
    estimator: str
    estimation: str
    eigengap: str
    spectrum: tuple[float, ...]
    rank: int
    arms_table: tuple[Mapping[str, Any], ...]
    split_hashes: Mapping[str, str]
    seeds: tuple[int, ...]
    metric: str = "accuracy"

    def headline(self) -> str:
        return self.verdict.headline()

    def fields(self) -> Mapping[str, Any]:
        return {
            "verdict": self.verdict.verdict,
            "lambda chosen on": self.selection,
            "applicability": self.applicability,
            "estimator": self.estimator,
            "rank": self.rank,
            "deploy metric": self.metric,
            "seeds": len(self.seeds),
            "recommendation": self.verdict.recommendation or "-",
        }

    def deploy_summary(self) -> str:
        """A few lines a person reads first: deploy accuracy per arm, the verdict, what to do instead."""
        extra = self.metric != "accuracy"
        what = f"accuracy, then {self.metric}" if extra else "accuracy"
        lines = [
            f"Deploy holdout {what} (mean ± sd over {len(self.seeds)} seeds; λ chosen on {self.selection}):"
        ]
        for row in self.arms_table:
            if row["selection"] in (self.selection, "fixed"):
                line = f"  {row['arm']:<12} {row['deploy_mean'] * 100:6.2f} ± {row['deploy_std'] * 100:.2f}"
                if extra:
                    line += f"   {row['metric_mean']:.4f} ± {row['metric_std']:.4f}"
                lines.append(line)
        lines.append(f"Verdict: {self.verdict.verdict}")
        lines.extend(f"  - {r}" for r in self.verdict.reasons)
        for split, other in self.other_verdicts.items():
            lines.append(f"With λ chosen on {split} instead: {other.verdict}")
        if self.verdict.recommendation:
            lines.append(f"Recommendation: {self.verdict.recommendation}")
        return "\n".join(lines)

    def tables(self) -> Sequence[Table]:
        columns = (
            "arm",
            "λ on",
            "deploy",
            "sd",
            self.metric,
            "source val",
            "drift Σ",
            "drift ⊥",
            "sensitivity",
            "λ per seed",
        )
        rows = tuple(
            (
                r["arm"],
                r["selection"],
                r["deploy_mean"],
                r["deploy_std"],
                r["metric_mean"],
                r["source_val_mean"],
                r["drift_sigma"],
                r["drift_complement"],
                r["sensitivity_ratio"],
                ", ".join(f"{s:g}" for s in r["strengths"]),
            )
            for r in self.arms_table
        )
        reasons = Table("Applicability", ("reason",), tuple((r,) for r in self.applicability_reasons))
        return (Table("Arms", columns, rows), *self.verdict.tables(), reasons)

    def figures(self) -> Mapping[str, Figure]:
        from matplotlib.figure import Figure

        rows = [r for r in self.arms_table if r["selection"] in (self.selection, "fixed")]
        names = [r["arm"] for r in rows]
        deploy = Figure(figsize=(6, 3.2))
        ax = deploy.add_subplot()
        ax.bar(names, [r["deploy_mean"] for r in rows], yerr=[r["deploy_std"] for r in rows], capsize=4)
        ax.set_ylabel("deploy holdout accuracy")
        ax.set_title(f"{self.verdict.verdict} (λ chosen on {self.selection}; error bars: sd over seeds)")
        ax.tick_params(axis="x", rotation=30)
        drift = Figure(figsize=(6, 3.2))
        ax = drift.add_subplot()
        width = 0.4
        xs = range(len(rows))
        ax.bar([x - width / 2 for x in xs], [r["drift_sigma"] for r in rows], width, label="along Σ")
        ax.bar([x + width / 2 for x in xs], [r["drift_complement"] for r in rows], width, label="complement")
        ax.set_xticks(list(xs), names, rotation=30)
        ax.set_yscale("log")
        ax.set_ylabel("deploy drift E‖Δh‖²")
        ax.legend()
        spectrum = Figure(figsize=(6, 3.2))
        ax = spectrum.add_subplot()
        ax.semilogy(range(1, len(self.spectrum) + 1), self.spectrum, marker=".")
        ax.axvline(self.rank + 0.5, color="tab:red", linestyle="--", label=f"rank {self.rank}")
        ax.set_xlabel("eigenvalue index")
        ax.set_ylabel("Σ eigenvalue")
        ax.set_title(self.eigengap, fontsize=8)
        ax.legend()
        return {
            "deploy accuracy per arm": deploy,
            "drift along Σ vs complement": drift,
            "Σ spectrum": spectrum,
        }


def _verdict_for(result: ArmsResult, selection: str, config: VerdictConfig) -> ShipVerdict:
    deploy = {arm: result.scores(arm, selection) for arm in result.arms}
    source = {arm: result.source_val(arm, selection) for arm in result.arms}
    return ship_verdict(deploy, source, config, metric=result.metric)


def try_pmh(
    model: nn.Module | Callable[[], nn.Module],
    data: Any,
    *,
    estimate_kind: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    strengths: Sequence[float] = (0.01, 0.1, 1.0),
    selection: str = "both",
    config: TrainConfig | None = None,
    verdict_config: VerdictConfig | None = None,
    metric: str | DeployMetric = "accuracy",
    quiet: bool = False,
) -> PMHReport:
    """Check, estimate, train every arm, and decide.

    Parameters
    ----------
    model
        A zero-argument factory (seeded per seed) or a model to start every arm from; never modified.
    data
        A :class:`~shiftlab.data.SitePair` or :class:`ArmsData` (source train/val, target pool, target
        validation, deploy holdout, disjoint).
    estimate_kind
        ``None`` picks ``"domain"`` (class-aligned when the pool has labels); or any kind ``run_arms`` takes.
    seeds, strengths, selection, config
        As in :func:`run_arms`.
    verdict_config
        Margin (in the metric's units), source tolerance, α, minimum seeds of the verdict.
    metric
        Deploy metric (see :func:`run_arms`); λ is chosen and the verdict decided by it.

    Returns
    -------
    PMHReport

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> def xy(n, shift=0.0):
    ...     x = torch.randn(n, 4, generator=g); y = (x[:, 0] > 0).long(); x[:, 1] += shift
    ...     return x, y
    >>> (xp, yp) = xy(60, 2.0)
    >>> data = ArmsData(xy(200), xy(100), xp, xy(100, 2.0), target_pool_labels=yp, target_val=xy(50, 2.0))
    >>> net = lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> report = try_pmh(net, data, seeds=(0, 1), strengths=(0.1,), quiet=True,
    ...                  config=TrainConfig(epochs=2, batch_size=50, device="cpu"))
    >>> report.verdict.verdict in ("SHIP", "DO NOT SHIP", "INCONCLUSIVE")
    True
    """
    arms_data = data if isinstance(data, ArmsData) else ArmsData.from_site_pair(data)
    source_x, source_y = arms_data.source_train
    applicability = check_applicability(
        source_x.flatten(1), source_y, arms_data.target_pool.flatten(1), arms_data.target_pool_labels
    )
    if applicability.verdict == "no-go":
        raise ValueError("the shift does not look label-preserving: " + "; ".join(applicability.reasons))
    kind = estimate_kind or "domain"
    result = run_arms(
        model,
        arms_data,
        estimate_kind=kind,
        seeds=seeds,
        strengths=strengths,
        selection=selection,
        config=config,
        metric=metric,
        quiet=quiet,
    )
    vconfig = verdict_config or VerdictConfig()
    primary = result.primary_selection
    verdict = _verdict_for(result, primary, vconfig)
    others = {s: _verdict_for(result, s, vconfig) for s in result.selections if s != primary}
    check = eigengap_check(result.estimate)
    spectrum = result.estimate.spectrum.double()
    return PMHReport(
        verdict=verdict,
        other_verdicts=others,
        selection=primary,
        applicability=applicability.verdict,
        applicability_reasons=tuple(applicability.reasons),
        estimator=result.estimate.estimator,
        estimation=result.estimation,
        eigengap=check.message(),
        spectrum=tuple(float(v) for v in spectrum[: min(64, spectrum.numel())]),
        rank=result.estimate.rank,
        arms_table=tuple(result.table()),
        split_hashes=dict(result.split_hashes),
        seeds=tuple(result.seeds),
        metric=result.metric,
    )
