r"""``LossBudget``: keep the penalty's share of the loss inside a band without killing its gradient.

At step t with task loss :math:`L`, raw penalty :math:`P` and strength :math:`\lambda`, the applied
coefficient is :math:`c = \lambda \cdot r_t \cdot s` with a warm-up ramp :math:`r_t \in [0, 1]` and a
**detached** rescaling factor

.. math:: s = \operatorname{clip}\!\Big(\frac{\lambda P}{L}, \rho_{min}, \rho_{max}\Big)
          \Big/ \frac{\lambda P}{L},

so that the applied ratio :math:`c P / L` lies in :math:`[r_t \rho_{min}, r_t \rho_{max}]`. Because only the
coefficient is rescaled (not the penalty replaced by a constant), :math:`\partial (cP)/\partial\theta = c\,
\partial P/\partial\theta \ne 0` whenever the penalty has a gradient.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch


@dataclasses.dataclass(frozen=True)
class BudgetEpoch:
    """Per-epoch record: steps, mean raw ratio λP/L, mean applied ratio cP/L, steps scaled down or up,
    and steps where the penalty contributed."""

    steps: int
    mean_raw_ratio: float
    mean_applied_ratio: float
    scaled_down: int
    scaled_up: int
    active: int


class LossBudget:
    """Rescale the penalty coefficient so that penalty / task loss stays in ``[min_ratio, max_ratio]``.

    Parameters
    ----------
    min_ratio, max_ratio
        The band for the applied ratio, ``0 <= min_ratio < max_ratio``. The defaults (5%–30%) keep the
        penalty large enough to shape training and small enough not to dominate the task loss.
    warmup
        Fraction of the total steps over which the coefficient ramps linearly from 0 to 1.

    Examples
    --------
    >>> budget = LossBudget(min_ratio=0.1, max_ratio=0.2, warmup=0.0)
    >>> budget.start(total_steps=10)
    >>> w = torch.tensor(1.0, requires_grad=True)
    >>> total = budget.combine(torch.tensor(1.0), 100 * w**2, strength=1.0)
    >>> round(float(total.detach()), 4)  # 1 + 0.2: the penalty capped at 20% of the task loss
    1.2
    >>> total.backward(); round(float(w.grad), 4)  # d/dw (0.002 * 100 w²) = 0.4
    0.4
    """

    def __init__(self, min_ratio: float = 0.05, max_ratio: float = 0.30, warmup: float = 0.1) -> None:
        for name, value in (("min_ratio", min_ratio), ("max_ratio", max_ratio), ("warmup", warmup)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
        if not 0 <= min_ratio < max_ratio:
            raise ValueError(f"need 0 <= min_ratio < max_ratio; got {min_ratio}, {max_ratio}")
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup must be a fraction in [0, 1); got {warmup}")
        self.min_ratio = float(min_ratio)
        self.max_ratio = float(max_ratio)
        self.warmup = float(warmup)
        self._total_steps = 0
        self._step = 0
        self._ever_active = False
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        self._raw: list[float] = []
        self._applied: list[float] = []
        self._down = 0
        self._up = 0
        self._active = 0

    def start(self, total_steps: int) -> None:
        """Declare the number of training steps (sets the warm-up length)."""
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an int >= 1; got {total_steps!r}")
        self._total_steps = total_steps
        self._step = 0
        self._ever_active = False
        self._reset_epoch()

    def ramp(self) -> float:
        """Warm-up factor r_t for the current step."""
        warm_steps = self.warmup * self._total_steps
        return 1.0 if warm_steps < 1 else min(1.0, self._step / warm_steps)

    def combine(self, task_loss: torch.Tensor, penalty: torch.Tensor, strength: float) -> torch.Tensor:
        """``task_loss + c * penalty`` with the detached coefficient c described above; advances one step."""
        if self._total_steps == 0:
            raise RuntimeError("call start(total_steps) before combine()")
        if not (math.isfinite(strength) and strength >= 0):
            raise ValueError(f"strength must be a finite float >= 0; got {strength}")
        loss_value = float(task_loss.detach())
        penalty_value = float(penalty.detach())
        if not (math.isfinite(loss_value) and math.isfinite(penalty_value)):
            raise FloatingPointError(
                f"non-finite loss ({loss_value}) or penalty ({penalty_value}) at step {self._step}"
            )
        ramp = self.ramp()
        raw = strength * penalty_value / loss_value if loss_value > 0 else math.inf
        if strength == 0 or penalty_value == 0 or loss_value <= 0:
            coefficient = strength * ramp if loss_value > 0 else 0.0
        else:
            target = min(max(raw, self.min_ratio), self.max_ratio)
            self._down += raw > self.max_ratio
            self._up += raw < self.min_ratio
            coefficient = strength * ramp * target / raw
        applied = coefficient * penalty_value / loss_value if loss_value > 0 else 0.0
        if coefficient > 0 and penalty_value > 0:
            self._active += 1
            self._ever_active = True
        self._raw.append(raw)
        self._applied.append(applied)
        self._step += 1
        return task_loss + coefficient * penalty

    def end_epoch(self) -> BudgetEpoch:
        """Summarise the steps since the last call and start a new epoch record."""
        finite = [r for r in self._raw if math.isfinite(r)]
        record = BudgetEpoch(
            steps=len(self._raw),
            mean_raw_ratio=sum(finite) / len(finite) if finite else math.nan,
            mean_applied_ratio=sum(self._applied) / len(self._applied) if self._applied else math.nan,
            scaled_down=self._down,
            scaled_up=self._up,
            active=self._active,
        )
        self._reset_epoch()
        return record

    def finish(self) -> None:
        """Warn once if the penalty never contributed to any step."""
        if self._total_steps and not self._ever_active:
            warnings.warn(
                "the PMH penalty was never active: it was zero, its strength was zero, "
                "or warm-up covered every step",
                RuntimeWarning,
                stacklevel=2,
            )
