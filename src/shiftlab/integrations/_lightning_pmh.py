r"""The PMH penalty inside a ``LightningModule``: a budgeted objective for any ``training_step``, a module.

:class:`PMHObjective` is the loss :math:`\mathrm{task}(f(x), y) + c\,P(x)` with the
:class:`~shiftlab.pmh.PMHPenalty` :math:`P` and the :class:`~shiftlab.pmh.LossBudget` coefficient
:math:`c`; :class:`PMHLightningModule` is a complete classifier module built on it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from shiftlab.integrations._optional import require
from shiftlab.pmh import BudgetEpoch, BudgetSettings, LossBudget, NuisanceEstimate, PMHPenalty

if TYPE_CHECKING:
    import lightning.pytorch as pl
else:
    pl = require("lightning.pytorch", "lightning")

__all__ = ["DEFAULT_BUDGET", "PMHLightningModule", "PMHObjective"]

TaskLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: The default budget of :class:`PMHLightningModule` and :class:`PMHObjective`: ``LossBudget``'s own
#: defaults (band 5-30 % of the task loss, 10 % warm-up, the floor raising λ at most ``max_boost`` = 2 times).
#: An unbounded floor drove the network to a constant output on MNIST → UCI digits at the quick budget
#: (deploy accuracy 10.1 %); with the bounded floor the quick run gives 82.3 ± 0.9 % (cap only: 81.0) and the
#: full one 84.7 ± 0.7 % (cap only: 85.0) (``python examples/lightning_pmh.py [--quick] --budget band|cap``).
DEFAULT_BUDGET = BudgetSettings(min_ratio=0.05, max_ratio=0.30, warmup=0.1, max_boost=2.0)


class PMHObjective(nn.Module):
    r"""Task loss plus the PMH penalty under a loss budget, for any ``LightningModule.training_step``.

    .. math:: L = \ell(f(x), y) + c \cdot \frac{1}{k}\sum_{b \le k}\operatorname{tr}(J_b \Sigma' J_b^\top),

    with the :class:`~shiftlab.pmh.PMHPenalty` on the first ``k = ⌈fraction · B⌉`` rows and the task loss
    :math:`\ell` on the whole batch from the penalty's own unperturbed output (no extra forward pass).
    :math:`c` is the :class:`~shiftlab.pmh.LossBudget` coefficient (a detached rescaling of ``strength``
    that keeps :math:`cP/\ell` in the band, so the penalty's gradient survives) or ``strength`` without a
    budget. Each call logs, at epoch level through ``module.log`` (mean over the epoch's batches and, under
    DDP, over ranks): ``task_loss``, ``penalty`` (raw :math:`P`) and ``ratio`` (applied :math:`cP/\ell`).

    Under DDP each rank's budget rescales from its own batch and DDP averages the gradients; the penalty's
    probe generator is seeded with ``seed`` on every rank (the ``"wrong"`` control's subspace must be the
    same everywhere), so Hutchinson/fd probes repeat across ranks on different rows.

    Use it from a module: call :meth:`start` in ``on_train_start`` (the budget's warm-up needs the step
    count), :meth:`end_epoch` in ``on_train_epoch_end`` and :meth:`finish` in ``on_train_end``, as
    :class:`PMHLightningModule` does.

    Parameters
    ----------
    estimate
        The matched :class:`~shiftlab.pmh.NuisanceEstimate` (its site says where to perturb).
    strength
        λ ≥ 0.
    budget
        :class:`~shiftlab.pmh.BudgetSettings` of the :class:`~shiftlab.pmh.LossBudget` built here (one per
        objective, so budgets are never shared; default :data:`DEFAULT_BUDGET`), or ``None`` for the plain
        sum ``ℓ + λP``.
    measure, mode, estimator, n_probes, seed
        Passed to :class:`~shiftlab.pmh.PMHPenalty`.
    fraction
        Share of each batch the penalty is computed on, in ``(0, 1]``.
    loss
        Task loss ``loss(output, y)``; cross-entropy by default.
    prefix
        Prepended to every logged name.

    Examples
    --------
    >>> import torch
    >>> from shiftlab.pmh import NuisanceEstimate
    >>> est = NuisanceEstimate(torch.eye(4)[:, :1], 0.0, torch.tensor([1.0, 0.0]), "input", (4,), "demo", {})
    >>> objective = PMHObjective(est, strength=0.5, budget=None)
    >>> objective.penalty.estimator, objective.strength
    ('jvp', 0.5)
    """

    def __init__(
        self,
        estimate: NuisanceEstimate,
        *,
        strength: float = 1.0,
        budget: BudgetSettings | None = DEFAULT_BUDGET,
        measure: str = "output",
        mode: str = "matched",
        estimator: str = "jvp",
        n_probes: int = 1,
        seed: int = 0,
        fraction: float = 1.0,
        loss: TaskLoss = cross_entropy,
        prefix: str = "pmh/",
    ) -> None:
        super().__init__()
        if (
            isinstance(strength, bool)
            or not isinstance(strength, int | float)
            or not (math.isfinite(strength) and strength >= 0)
        ):
            raise ValueError(f"strength must be a finite number >= 0; got {strength!r}")
        if budget is not None and not isinstance(budget, BudgetSettings):
            raise TypeError(f"budget must be BudgetSettings or None; got {type(budget).__name__}")
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise ValueError(f"fraction must lie in (0, 1]; got {fraction!r}")
        if not callable(loss):
            raise TypeError("loss must be a callable loss(output, y)")
        self.penalty = PMHPenalty(
            estimate, measure=measure, mode=mode, estimator=estimator, n_probes=n_probes, seed=seed
        )
        self.strength = float(strength)
        self.budget: LossBudget | None = None if budget is None else budget.build()
        self.fraction = float(fraction)
        self.loss = loss
        self.prefix = prefix

    def start(self, total_steps: int | float) -> None:
        """Declare the number of optimizer steps (``trainer.estimated_stepping_batches``) to the budget."""
        if self.budget is None:
            return
        if not math.isfinite(total_steps):
            raise ValueError("the loss budget needs a finite number of steps: set max_epochs or max_steps")
        self.budget.start(int(total_steps))

    def forward(
        self, module: pl.LightningModule, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """The combined loss on batch ``(x, y)`` for ``model`` (e.g. ``module.net``); logs via ``module``."""
        out = self.penalty(model, x, fraction=self.fraction)
        task = self.loss(out.output, y)
        if self.budget is not None:
            total = self.budget.combine(task, out.value, self.strength)
        else:
            total = task + self.strength * out.value
        task_value = task.detach()
        ratio = (total.detach() - task_value) / task_value
        logged = {"task_loss": task_value, "penalty": out.value.detach(), "ratio": ratio}
        for name, value in logged.items():
            module.log(
                self.prefix + name, value, on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0]
            )
        return total

    def end_epoch(self) -> BudgetEpoch | None:
        """Close the budget's epoch record (``None`` without a budget)."""
        return None if self.budget is None else self.budget.end_epoch()

    def finish(self) -> None:
        """Let the budget warn once if the penalty never contributed."""
        if self.budget is not None:
            self.budget.finish()


class PMHLightningModule(pl.LightningModule):
    """A classifier trained with cross-entropy plus the PMH penalty under a loss budget.

    The user's ``model`` is deep-copied into ``self.net`` (never modified); callbacks name its layers
    ``"net.<name>"``. ``training_step`` returns :class:`PMHObjective`'s loss (and logs ``pmh/task_loss``,
    ``pmh/penalty``, ``pmh/ratio``); ``validation_step`` logs ``val/loss`` and ``val/accuracy``. The
    optimizer is Adam.

    Parameters
    ----------
    model
        Classifier returning logits ``(B, classes)``.
    estimate
        The matched :class:`~shiftlab.pmh.NuisanceEstimate`.
    strength
        λ (0 trains plainly, the penalty is still computed and logged).
    budget
        :class:`~shiftlab.pmh.BudgetSettings` (default :data:`DEFAULT_BUDGET`: penalty kept within 5-30 %
        of the task loss, the floor raising λ at most twice, 10 % warm-up); ``None`` for the plain sum.
    lr
        Adam learning rate.
    **penalty
        ``measure``, ``mode``, ``estimator``, ``n_probes``, ``seed``, ``fraction`` of :class:`PMHObjective`.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from shiftlab.pmh import NuisanceEstimate
    >>> est = NuisanceEstimate(torch.eye(4)[:, :1], 0.0, torch.tensor([1.0, 0.0]), "input", (4,), "demo", {})
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> module = PMHLightningModule(net, est, lr=1e-2)
    >>> module.net is net, tuple(module(torch.zeros(3, 4)).shape)
    (False, (3, 2))
    """

    def __init__(
        self,
        model: nn.Module,
        estimate: NuisanceEstimate,
        *,
        strength: float = 1.0,
        budget: BudgetSettings | None = DEFAULT_BUDGET,
        lr: float = 1e-3,
        **penalty: Any,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
        self.net = copy.deepcopy(model)
        self.objective = PMHObjective(estimate, strength=strength, budget=budget, **penalty)
        self.lr = float(lr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's logits."""
        out = self.net(x)
        assert isinstance(out, torch.Tensor)
        return out

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy plus the budgeted PMH penalty on one batch."""
        x, y = batch
        return self.objective(self, self.net, x, y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Log validation loss and accuracy (epoch means over all ranks)."""
        x, y = batch
        logits = self(x)
        size = x.shape[0]
        self.log("val/loss", cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=size)
        accuracy = (logits.argmax(dim=1) == y).to(torch.float32).mean()
        self.log("val/accuracy", accuracy, on_epoch=True, sync_dist=True, batch_size=size)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam on the classifier's parameters."""
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)

    def on_train_start(self) -> None:
        """Give the budget its step count."""
        self.objective.start(self.trainer.estimated_stepping_batches)

    def on_train_epoch_end(self) -> None:
        """Close the budget's epoch record."""
        self.objective.end_epoch()

    def on_train_end(self) -> None:
        """Let the budget warn if the penalty never contributed."""
        self.objective.finish()
