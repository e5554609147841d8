r"""``LossBudget``: keep the penalty's share of the loss inside a band without killing its gradient.

At step t with task loss :math:`L`, raw penalty :math:`P` and strength :math:`\lambda`, the applied
coefficient is :math:`c = \lambda \cdot r_t \cdot \min(s, \beta)` with a warm-up ramp
:math:`r_t \in [0, 1]`, a **detached** rescaling factor

.. math:: s = \operatorname{clip}\!\Big(\frac{\lambda P}{L}, \rho_{min}, \rho_{max}\Big)
          \Big/ \frac{\lambda P}{L},

and a bound :math:`\beta \ge 1` (``max_boost``) on how far the floor may raise the coefficient. Whenever
:math:`\lambda P / L \ge \rho_{min} / \beta` the applied ratio :math:`c P / L` lies in
:math:`[r_t \rho_{min}, r_t \rho_{max}]`; below that the floor stops at :math:`c = \beta \lambda r_t` and the
ratio is left under the band (counted in :attr:`BudgetEpoch.boost_capped`). Because only the coefficient
is rescaled (not the penalty replaced by a constant), :math:`\partial (cP)/\partial\theta = c\,
\partial P/\partial\theta \ne 0` whenever the penalty has a gradient.

Why the floor is bounded: an unbounded floor sets :math:`c = \rho_{min} L / P`, so the penalty's gradient
is :math:`c\,\nabla P = \rho_{min} L\,\nabla \log P`, which pays the same for every halving of
:math:`P` and drives it to zero at any cost to the task. A freshly initialised network has a tiny Jacobian
along Σ (on MNIST → UCI digits, :math:`\lambda P / L \approx 0.002` at λ = 1 and the first step), so the
floor starts by multiplying λ about 25× and then chases :math:`P \to 0`: at lr 3e-3 (``PMHTrainer``,
the ``shiftlab try --quick`` data) the network collapsed to a constant output (deploy accuracy 10.1 %,
the epoch-mean penalty down 770× and the coefficient up to 1.8·10⁴ λ in 6 epochs, while every epoch
after the warm-up logged an applied ratio of exactly 5 %). With the bound the objective is never stronger
than the plain sum at :math:`\beta\lambda`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch


@dataclasses.dataclass(frozen=True)
class BudgetEpoch:
    """Per-epoch record of a :class:`LossBudget`.

    Attributes
    ----------
    steps
        Steps in the epoch.
    mean_raw_ratio
        Mean of λP/L (the ratio without the budget).
    mean_applied_ratio
        Mean of cP/L (the ratio that trained).
    scaled_down
        Steps where the cap lowered the coefficient (λP/L > ``max_ratio``).
    scaled_up
        Steps where the floor raised it (λP/L < ``min_ratio``).
    active
        Steps where the penalty contributed (c > 0 and P > 0).
    boost_capped
        Steps of ``scaled_up`` where the floor wanted more than ``max_boost`` × λ and stopped there, so
        the applied ratio stayed below ``min_ratio`` (a penalty that is small for the task, e.g. a fresh
        network's; many such steps late in training mean λ is far too small for the band).
    max_factor
        Largest detached factor c / (λ r_t) of the epoch: above 1 when the floor raised the coefficient,
        below 1 when only the cap acted, NaN when no step was rescaled.
    """

    steps: int
    mean_raw_ratio: float
    mean_applied_ratio: float
    scaled_down: int
    scaled_up: int
    active: int
    boost_capped: int
    max_factor: float


class LossBudget:
    """Rescale the penalty coefficient so that penalty / task loss stays in ``[min_ratio, max_ratio]``.

    Parameters
    ----------
    min_ratio, max_ratio
        The band for the applied ratio, ``0 <= min_ratio < max_ratio``. The defaults (5%–30%) keep the
        penalty large enough to shape training and small enough not to dominate the task loss.
    warmup
        Fraction of the total steps over which the coefficient ramps linearly from 0 to 1.
    max_boost
        The floor raises the coefficient to at most ``max_boost`` × λ (finite, >= 1; 1 turns the floor
        off). Default 2, measured on MNIST → UCI digits (input-site ``fd`` penalty, λ = 1): there the
        floor only acts in the first epoch, on a fresh network, and larger bounds cost deploy accuracy
        at lr 3e-3. ``PMHTrainer``, 10 seeds: 81.8 % at 2, 80.6 % at 4, 74.1 % at 10, 12.7 % unbounded,
        80.9 % with the floor off; ``examples/lightning_pmh.py --quick``, 3 seeds: 82.3 % at 2, 77.0 % at
        10, 10.1 % unbounded, 81.0 % floor off. At lr 1e-3 every bound gave 84–85 % (Lightning, 6 seeds:
        84.9 % at 2, 85.0 % unbounded).

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
    >>> small = budget.combine(torch.tensor(1.0), torch.tensor(0.001), strength=1.0)
    >>> round(float(small), 4)  # the floor wants 100× λ, stops at max_boost = 2: 1 + 2 * 0.001
    1.002
    >>> budget.end_epoch().boost_capped
    1
    """

    def __init__(
        self,
        min_ratio: float = 0.05,
        max_ratio: float = 0.30,
        warmup: float = 0.1,
        max_boost: float = 2.0,
    ) -> None:
        for name, value in (
            ("min_ratio", min_ratio),
            ("max_ratio", max_ratio),
            ("warmup", warmup),
            ("max_boost", max_boost),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
        if not 0 <= min_ratio < max_ratio:
            raise ValueError(f"need 0 <= min_ratio < max_ratio; got {min_ratio}, {max_ratio}")
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup must be a fraction in [0, 1); got {warmup}")
        if max_boost < 1:
            raise ValueError(f"max_boost must be >= 1 (1 turns the floor off); got {max_boost}")
        self.min_ratio = float(min_ratio)
        self.max_ratio = float(max_ratio)
        self.warmup = float(warmup)
        self.max_boost = float(max_boost)
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
        self._capped = 0
        self._factor = math.nan

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

    def factor(self, raw_ratio: float) -> float:
        r"""The detached factor :math:`\min(s, \beta)` for a raw ratio λP/L > 0 (no warm-up, no counting).

        Examples
        --------
        >>> budget = LossBudget(min_ratio=0.05, max_ratio=0.30, max_boost=2.0)
        >>> budget.factor(0.6), budget.factor(0.1), budget.factor(0.04), budget.factor(1e-6)
        (0.5, 1.0, 1.25, 2.0)
        """
        if not (math.isfinite(raw_ratio) and raw_ratio > 0):
            raise ValueError(f"raw_ratio must be a finite number > 0; got {raw_ratio}")
        target = min(max(raw_ratio, self.min_ratio), self.max_ratio)
        return min(target / raw_ratio, self.max_boost)

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
            factor = self.factor(raw)
            self._down += raw > self.max_ratio
            self._up += raw < self.min_ratio
            self._capped += raw * self.max_boost < self.min_ratio
            coefficient = strength * ramp * factor
            if ramp > 0:
                self._factor = factor if math.isnan(self._factor) else max(self._factor, factor)
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
            boost_capped=self._capped,
            max_factor=self._factor,
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
