"""Figures of perturbation runs: before / after / target samples and the W2 trajectory (no pyplot)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

__all__ = ["sample_figure", "trajectory_figure"]

_MAX_POINTS = 1000
_GRID = 8


def _planar(clouds: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], str]:
    """2-D coordinates of every cloud: the data itself in 2-D, else the top-2 principal axes of all clouds."""
    if clouds[0].shape[1] == 2:
        return [c.double() for c in clouds], "x1 / x2"
    pooled = torch.cat([c.double() for c in clouds])
    mean = pooled.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(pooled - mean, full_matrices=False)
    axes = vh[:2].T
    return [(c.double() - mean) @ axes for c in clouds], "principal axes 1 / 2"


def _image_grid(samples: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    side = shape[-1]
    count = min(_GRID * _GRID, samples.shape[0])
    imgs = samples[:count].reshape(count, shape[-2], side).double()
    canvas = torch.ones(_GRID * (shape[-2] + 1), _GRID * (side + 1), dtype=torch.float64)
    for i in range(count):
        r, c = divmod(i, _GRID)
        canvas[
            r * (shape[-2] + 1) : r * (shape[-2] + 1) + shape[-2], c * (side + 1) : c * (side + 1) + side
        ] = imgs[i]
    return canvas


def sample_figure(
    before: torch.Tensor, after: torch.Tensor, target: torch.Tensor, data_shape: tuple[int, ...], title: str
) -> Figure:
    """Scatter (low-dimensional data, shared axes) or image grids (one-channel images) of the samples."""
    fig = Figure(figsize=(12, 4))
    names = ("before (validation latents)", "after (validation latents)", "held-out target")
    clouds = [before.detach().cpu(), after.detach().cpu(), target.detach().cpu()]
    if len(data_shape) == 3 and data_shape[0] == 1:
        for i, (name, cloud) in enumerate(zip(names, clouds, strict=True)):
            ax = fig.add_subplot(1, 3, i + 1)
            ax.imshow(_image_grid(cloud, data_shape).numpy(), cmap="gray_r", vmin=0.0, vmax=1.0)
            ax.set_title(f"{title}: {name}")
            ax.axis("off")
        return fig
    planar, label = _planar(clouds)
    pooled = torch.cat([p[:_MAX_POINTS] for p in planar])
    low, high = pooled.min(dim=0).values, pooled.max(dim=0).values
    pad = 0.05 * (high - low).clamp_min(1e-9)
    colours = ("tab:blue", "tab:orange", "0.4")
    for i, (name, pts) in enumerate(zip(names, planar, strict=True)):
        ax = fig.add_subplot(1, 3, i + 1)
        if i < 2:
            ax.scatter(planar[2][:_MAX_POINTS, 0], planar[2][:_MAX_POINTS, 1], s=3, c="0.85")
        ax.scatter(pts[:_MAX_POINTS, 0], pts[:_MAX_POINTS, 1], s=3, c=colours[i])
        ax.set_xlim(float(low[0] - pad[0]), float(high[0] + pad[0]))
        ax.set_ylim(float(low[1] - pad[1]), float(high[1] + pad[1]))
        ax.set_title(f"{title}: {name}", fontsize=10)
        ax.set_xlabel(label)
    return fig


def trajectory_figure(w2: Sequence[float], drift: Sequence[float]) -> Figure:
    """Validation W2 per step and the parameter drift ||theta - theta0||."""
    fig = Figure(figsize=(9, 3.5))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(range(len(w2)), w2, marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("validation W2 (data units)")
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.plot(range(1, len(drift) + 1), drift, marker="o", ms=3, c="tab:green")
    ax2.set_xlabel("step")
    ax2.set_ylabel("||theta - theta0||")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig
