"""The MNIST → UCI digits demo of the PMH gate: a small MLP and two training budgets (full and quick)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from shiftlab.pmh._train_config import TrainConfig

__all__ = ["DigitsBudget", "digits_budget", "digits_mlp"]


def digits_mlp(side: int = 8, hidden: tuple[int, ...] = (128, 128), classes: int = 10) -> nn.Sequential:
    """``Flatten → Linear(side², h₁) → ReLU → … → Linear(h_k, classes)``: the demo's classifier.

    Layer names (for a hidden ``site``): ``"2"`` is the first ReLU's output, ``"4"`` the second's.

    Examples
    --------
    >>> import torch
    >>> digits_mlp()(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    """
    if side < 1 or classes < 2 or not hidden or any(h < 1 for h in hidden):
        raise ValueError(
            f"need side >= 1, classes >= 2 and positive hidden widths; got {side}, {classes}, {hidden}"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    width = side * side
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


@dataclasses.dataclass(frozen=True)
class DigitsBudget:
    """How much the digits demo trains: split sizes for ``two_site``, the trainer config, λ grid, seeds."""

    sizes: Mapping[str, int]
    config: TrainConfig
    strengths: tuple[float, ...]
    seeds: tuple[int, ...]

    def pair(self, seed: int = 0) -> Any:
        """``two_site("mnist", "digits", seed=seed, sizes=self.sizes)``."""
        from shiftlab.data import two_site

        return two_site("mnist", "digits", seed=seed, sizes=dict(self.sizes))


def digits_budget(quick: bool = False, *, device: str = "auto") -> DigitsBudget:
    """The full demo budget, or the ``quick`` one behind ``shiftlab try --quick``.

    Full: 10,000 source training images, 10 epochs, λ ∈ {0.01, 0.1, 1}, 3 seeds (about 10 minutes on one
    CPU core). Quick: 2,000 source images, 6 epochs at a larger learning rate, λ ∈ {0.1, 1}, 3 seeds: every
    arm of every seed really trains, in well under a minute on one core. Both use the one-probe
    finite-difference penalty (the cheapest estimator, about one extra forward pass per step).

    Examples
    --------
    >>> b = digits_budget(quick=True, device="cpu")
    >>> b.config.epochs, b.strengths, b.seeds
    (6, (0.1, 1.0), (0, 1, 2))
    """
    if quick:
        config = TrainConfig(epochs=6, batch_size=128, lr=3e-3, estimator="fd", device=device)
        return DigitsBudget({"source_train": 2000, "source_val": 1000}, config, (0.1, 1.0), (0, 1, 2))
    config = TrainConfig(epochs=10, batch_size=128, lr=1e-3, estimator="fd", device=device)
    return DigitsBudget({"source_train": 10_000, "source_val": 2000}, config, (0.01, 0.1, 1.0), (0, 1, 2))
