"""``MBEReport``: the verdict table, the sanity controls, figures and JSON of one metric audit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from shiftlab.audit._config import MBEConfig
from shiftlab.audit._verdict import LadderStep, MetricVerdict
from shiftlab.report import Report, Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MBEReport", "PlotData"]


@dataclass(frozen=True, eq=False)
class PlotData:
    """What the figures draw (pooled cell): metric and target, and their residuals given the baselines."""

    metric_names: tuple[str, ...]
    metric: npt.NDArray[np.float64]
    target: npt.NDArray[np.float64]
    metric_residuals: npt.NDArray[np.float64]
    target_residuals: npt.NDArray[np.float64]
    ranked: bool


def _ci(low: float, high: float) -> str:
    return f"[{low:+.2f}, {high:+.2f}]"


@dataclass(frozen=True)
class MBEReport(Report):
    """Result of :meth:`MBEEvaluator.evaluate`: one :class:`MetricVerdict` per metric x group, the sanity
    controls, and (with two or more baselines) the baseline ladder of the pooled runs.

    ``to_dict()`` (the ``--json`` output) holds every number; ``figures()`` draws metric vs target, the
    partial residual plot and a forest plot of the intervals.

    Examples
    --------
    >>> import numpy as np
    >>> from shiftlab.audit import MBEConfig, MBEEvaluator
    >>> rng = np.random.default_rng(0)
    >>> loss = rng.normal(size=60)
    >>> acc = -loss + rng.normal(size=60)
    >>> report = MBEEvaluator("m", "val_loss", config=MBEConfig(n_boot=400)).evaluate(
    ...     rng.normal(size=60), loss, acc, target_name="acc")
    >>> report.kind, report.verdict("m").group
    ('metric_audit', 'all')
    """

    kind: ClassVar[str] = "metric_audit"

    target: str
    baselines: tuple[str, ...]
    n: int
    config: MBEConfig
    results: tuple[MetricVerdict, ...]
    controls: tuple[MetricVerdict, ...]
    ladder: tuple[LadderStep, ...]
    sanity_passed: bool
    sanity_notes: tuple[str, ...]
    plot: PlotData = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary of every field except the plotting arrays."""
        out = super().to_dict()
        out.pop("plot")
        return out

    def verdict(self, metric: str, group: str = "all") -> MetricVerdict:
        """The row of ``metric`` in ``group`` (``"all"`` is the pooled audit); controls included."""
        for row in (*self.results, *self.controls):
            if row.metric == metric and row.group == group:
                return row
        known = sorted({(r.metric, r.group) for r in (*self.results, *self.controls)})
        raise ValueError(f"no row for metric {metric!r} in group {group!r}; rows: {known}")

    def headline(self) -> str:
        pooled = [r for r in self.results if r.group == "all"]
        parts = "; ".join(f"{r.metric}: {r.verdict.value}" for r in pooled)
        sanity = "" if self.sanity_passed else " (SANITY CONTROLS FAILED)"
        return f"metric audit of {self.target} given {', '.join(self.baselines)}: {parts}{sanity}"

    def fields(self) -> Mapping[str, Any]:
        pooled = next((r for r in self.results if r.group == "all"), None)
        return {
            "target": self.target,
            "baselines": ", ".join(self.baselines),
            "runs": self.n,
            "inference": pooled.inference if pooled is not None else "",
            "correlation": self.config.method,
            "nuisance": self.config.nuisance,
            "alpha": self.config.alpha,
            "delta": self.config.delta,
            "bootstrap resamples": self.config.n_boot,
            "sanity controls": "passed" if self.sanity_passed else "FAILED",
        }

    def tables(self) -> Sequence[Table]:
        columns = ("metric", "group", "n", "raw rho [CI]", "partial rho [CI]", "q", "TOST q", "MDE", "class")

        def row(r: MetricVerdict) -> tuple[Any, ...]:
            return (
                r.metric,
                r.group,
                r.n,
                f"{r.raw_r:+.2f} {_ci(r.raw_ci_low, r.raw_ci_high)}",
                f"{r.partial_r:+.2f} {_ci(r.partial_ci_low, r.partial_ci_high)}",
                f"{r.partial_q:.3g}",
                f"{r.tost_q:.3g}",
                f"{r.mde:.2f}",
                r.verdict.value,
            )

        out = [
            Table("Verdicts", columns, tuple(row(r) for r in self.results)),
            Table(
                "Diagnosis",
                ("metric", "group", "diagnosis"),
                tuple((r.metric, r.group, r.diagnosis) for r in self.results),
            ),
        ]
        if self.ladder:
            out.append(
                Table(
                    "Baseline ladder (pooled runs)",
                    ("metric", "given", "partial rho [CI]"),
                    tuple(
                        (
                            s.metric,
                            ", ".join(s.controls) or "nothing (raw)",
                            f"{s.partial_r:+.2f} {_ci(s.ci_low, s.ci_high)}",
                        )
                        for s in self.ladder
                    ),
                )
            )
        if self.controls:
            out.append(Table("Sanity controls", columns, tuple(row(r) for r in self.controls)))
            out.append(Table("Sanity checks", ("check",), tuple((note,) for note in self.sanity_notes)))
        return out

    def figures(self) -> Mapping[str, Figure]:
        from shiftlab.audit._figures import forest_figure, residual_figure, scatter_figure

        return {
            "metric vs target": scatter_figure(self.plot, self.target),
            "partial residual plot": residual_figure(self.plot, self.target, self.results[0].controls),
            "confidence intervals": forest_figure((*self.results, *self.controls), self.config.delta),
        }
