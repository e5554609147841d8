"""Figures of a metric audit, drawn on :class:`matplotlib.figure.Figure` objects (no pyplot global state)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from shiftlab.audit._report import PlotData
from shiftlab.audit._verdict import MetricVerdict, Verdict

__all__ = ["forest_figure", "residual_figure", "scatter_figure"]

_COLOURS = {Verdict.SIGNAL: "#1b7837", Verdict.LOSS_PROXY: "#b2182b", Verdict.INCONCLUSIVE: "#777777"}


def _grid(count: int) -> tuple[Figure, list[Axes]]:
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(count)]
    return fig, axes


def scatter_figure(plot: PlotData, target: str) -> Figure:
    """Each audited metric against the target (pooled runs)."""
    fig, axes = _grid(len(plot.metric_names))
    for j, (ax, name) in enumerate(zip(axes, plot.metric_names, strict=True)):
        ax.scatter(plot.metric[:, j], plot.target, s=14, alpha=0.7)
        ax.set_xlabel(name)
        ax.set_ylabel(target)
        ax.set_title(f"{name} vs {target}")
    return fig


def residual_figure(plot: PlotData, target: str, baselines: Sequence[str]) -> Figure:
    """Partial residual plot: what is left of metric and target once the baselines are removed.

    The slope of the cloud is the partial correlation; a round cloud means the metric's association with
    the target went through the baselines.
    """
    fig, axes = _grid(len(plot.metric_names))
    kind = "rank residual" if plot.ranked else "residual"
    given = ", ".join(baselines)
    for j, (ax, name) in enumerate(zip(axes, plot.metric_names, strict=True)):
        ax.scatter(plot.metric_residuals[:, j], plot.target_residuals, s=14, alpha=0.7)
        ax.axhline(0.0, color="#999999", lw=0.8)
        ax.axvline(0.0, color="#999999", lw=0.8)
        ax.set_xlabel(f"{name} {kind} | {given}")
        ax.set_ylabel(f"{target} {kind} | {given}")
        ax.set_title(f"{name}: partial residuals")
    return fig


def forest_figure(rows: Sequence[MetricVerdict], delta: float) -> Figure:
    """Raw (open) and partial (filled) correlation intervals of every row, with the ±delta band shaded."""
    fig = Figure(figsize=(7.5, 0.45 * len(rows) + 1.6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.axvspan(-delta, delta, color="#f4a582", alpha=0.3, label=f"±δ = {delta:g}")
    ax.axvline(0.0, color="#444444", lw=0.8)
    labels = []
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        colour = _COLOURS[r.verdict]
        ax.plot([r.raw_ci_low, r.raw_ci_high], [y + 0.15] * 2, color=colour, lw=1.2, alpha=0.6)
        ax.plot([r.raw_r], [y + 0.15], marker="o", mfc="white", color=colour)
        ax.plot([r.partial_ci_low, r.partial_ci_high], [y - 0.15] * 2, color=colour, lw=2.4)
        ax.plot([r.partial_r], [y - 0.15], marker="o", color=colour)
        labels.append(f"{r.metric} ({r.group}): {r.verdict.value}")
    ax.set_yticks(range(len(rows) - 1, -1, -1), labels)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("correlation with the target: raw (open) and partial (filled), with CIs")
    ax.legend(loc="lower right", fontsize=8)
    return fig
