r"""Projected gradient ascent (PGD, Madry et al. 2018) behind the ``adversarial`` nuisance estimator.

:func:`pgd` finds, for a batch, the displacement δ that raises the cross-entropy of ``model(x + δ)``
inside an :math:`L_\infty` or :math:`L_2` ball of radius ε (and, optionally, a valid input range);
:func:`check_range` validates that range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.functional import cross_entropy


def check_range(valid_range: Any) -> tuple[float, float]:
    ok = isinstance(valid_range, Sequence) and len(valid_range) == 2
    values = [v for v in valid_range if isinstance(v, int | float) and not isinstance(v, bool)] if ok else []
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or not values[0] < values[1]:
        raise ValueError(f"valid_range must be finite numbers (lo, hi) with lo < hi; got {valid_range!r}")
    return float(values[0]), float(values[1])


def _project(delta: torch.Tensor, norm: str, epsilon: float) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    flat = delta.flatten(1).norm(dim=1).clamp(min=1e-30)
    factor = (epsilon / flat).clamp(max=1.0)
    return delta * factor.view(-1, *([1] * (delta.ndim - 1)))


def _random_start(x: torch.Tensor, norm: str, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        return ((2 * u - 1) * epsilon).to(x.device)
    d = x[0].numel()
    g = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    radius = torch.rand(x.shape[0], generator=generator, device=generator.device, dtype=x.dtype) ** (1 / d)
    direction = g / g.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, *([1] * (x.ndim - 1)))
    return (direction * (epsilon * radius).view(-1, *([1] * (x.ndim - 1)))).to(x.device)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    epsilon: float,
    steps: int,
    step_size: float,
    random_start: bool,
    valid_range: tuple[float, float] | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """δ maximising the cross-entropy of ``model(x + δ)`` inside the ball (and the valid range)."""

    def clip(delta: torch.Tensor) -> torch.Tensor:
        delta = _project(delta, norm, epsilon)
        if valid_range is not None:
            delta = (x + delta).clamp(*valid_range) - x
        return delta

    delta = clip(_random_start(x, norm, epsilon, generator)) if random_start else torch.zeros_like(x)
    view = (-1, *([1] * (x.ndim - 1)))
    with torch.enable_grad():
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            logits = model(x + delta)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"adversarial needs a model returning (n, classes >= 2) logits; got {got}")
            (grad,) = torch.autograd.grad(cross_entropy(logits, y, reduction="sum"), delta)
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-30).view(view)
            delta = clip(delta.detach() + step_size * step)
    return delta.detach()
