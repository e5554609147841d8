r"""Lightning callbacks for the H0 monitors, and the PMH penalty inside a ``LightningModule``.

- :class:`PHMonitorCallback`: :class:`~shiftlab.topology.PHMonitor` after every training epoch on a fixed
  train probe and a validation set; logs H0 train / validation, their gap and the calibrated noise floor
  through the module's own logger (``pl_module.log``) and sets ``trainer.should_stop`` when the monitor's
  rule fires (``patience`` consecutive alerts).
- :class:`LayerMonitorCallback`: :class:`~shiftlab.topology.LayerPHMonitor` on a probe batch; logs the
  mean CKA merge height and the HEALTHY / WATCH / COLLAPSE state.
- :class:`PMHObjective`: the loss :math:`\mathrm{task}(f(x), y) + c\,P(x)` with the
  :class:`~shiftlab.pmh.PMHPenalty` :math:`P` and the :class:`~shiftlab.pmh.LossBudget` coefficient
  :math:`c`, for any ``training_step``; :class:`PMHLightningModule` is a complete module built on it.

Under a distributed strategy (DDP, on CPU with gloo or on GPUs with NCCL) every rank runs
:class:`PHMonitorCallback` on its share of the probes (rows ``rank, rank + W, ...``) and the features are
all-gathered back into the original order, so each rank holds all ranks' features, computes the same
geometry and null draws (same seed) and takes the same stop decision. :class:`LayerMonitorCallback`
runs on global rank 0 only and logs from there. Nothing here writes to a logger directly: every value
goes through ``pl_module.log``, so each metric reaches the trainer's logger(s) exactly once.

Needs ``pip install 'shiftlab[lightning]'``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from shiftlab.integrations._optional import require
from shiftlab.pmh import BudgetEpoch, BudgetSettings, LossBudget, NuisanceEstimate, PMHPenalty
from shiftlab.topology import (
    LayerConfig,
    LayerPHMonitor,
    LayerState,
    MonitorConfig,
    PHMonitor,
    extract_features,
)

if TYPE_CHECKING:
    import lightning.pytorch as pl
else:
    pl = require("lightning.pytorch", "lightning")

__all__ = [
    "DEFAULT_BUDGET",
    "LAYER_STATE_CODES",
    "LayerMonitorCallback",
    "PHMonitorCallback",
    "PMHLightningModule",
    "PMHObjective",
]

#: Numeric code logged for each layer state (loggers take numbers): 0 healthy, 1 watch, 2 collapse.
LAYER_STATE_CODES: dict[LayerState, int] = {
    LayerState.HEALTHY: 0,
    LayerState.WATCH: 1,
    LayerState.COLLAPSE: 2,
}

TaskLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: The default budget of :class:`PMHLightningModule` and :class:`PMHObjective`: cap the penalty at 30 % of
#: the task loss, 10 % warm-up, no lower end. ``LossBudget``'s own 5 % floor multiplies the coefficient by
#: about ``0.05 L / (λ P)`` while the penalty is small, so its gradient behaves like ``0.05 L ∇ log P`` and
#: rewards shrinking ``P`` without bound: on MNIST → UCI digits at the quick budget (2,000 images, lr 3e-3)
#: it drove the network to a constant output (deploy accuracy 10.1 %, against 81.0 % with this cap and
#: 67.5 % without the penalty); at the full budget (10,000 images, lr 1e-3) both budgets gave 85.0 %
#: (``python examples/lightning_pmh.py [--quick] --budget band|cap``).
DEFAULT_BUDGET = BudgetSettings(min_ratio=0.0, max_ratio=0.30, warmup=0.1)


def _labelled(data: tuple[torch.Tensor, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TypeError(f"{name} must be an (inputs, labels) pair of tensors")
    x, y = data
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must hold tensors; got {type(x).__name__}, {type(y).__name__}")
    if x.ndim < 2 or not x.is_floating_point():
        raise ValueError(
            f"{name} inputs must be a floating-point batch (n, ...); got {x.dtype} {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} inputs contain NaN or infinite values")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name} labels must have shape ({x.shape[0]},); got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name} labels must be an integer tensor; got {y.dtype}")
    if bool((y < 0).any()):
        raise ValueError(f"{name} labels must be non-negative class indices")
    return x, y.to(torch.int64)


def _gather_rows(trainer: pl.Trainer, local: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Reassemble rows ``rank::W`` of every rank into the original order of ``n`` rows (on the CPU)."""
    world = trainer.world_size
    if world == 1:
        return local
    per_rank = math.ceil(n / world)
    padded = local.new_zeros(per_rank, *local.shape[1:])
    padded[: local.shape[0]] = local
    gathered = trainer.strategy.all_gather(padded.to(device))
    assert isinstance(gathered, torch.Tensor)
    # rank r's j-th row is row j * W + r; padding only ever lands at positions >= n
    return gathered.cpu().transpose(0, 1).reshape(per_rank * world, *local.shape[1:])[:n]


class PHMonitorCallback(pl.Callback):
    """Run :class:`~shiftlab.topology.PHMonitor` after each training epoch; log it and stop on its rule.

    At ``on_train_epoch_end`` the features of ``layer`` (the module's output by default) are extracted on a
    copy of the module in eval mode (:func:`~shiftlab.topology.extract_features`) for ``train_probe`` and
    ``val``; :meth:`PHMonitor.update` computes H0 of both class geometries, their gap
    :math:`h_0^{tr} - h_0^{va}` and the split-null noise floor. Logged (epoch level, prefix ``prefix``):
    ``h0_train``, ``h0_val``, ``gap``, ``noise_floor``, ``p_value``, ``alert`` (0/1) and ``consecutive``.
    When the monitor's stop rule fires (``config.patience`` consecutive alerts, see
    :func:`~shiftlab.topology.consecutive_alert_stop`) and ``stop`` is true, ``trainer.should_stop`` is set.

    Parameters
    ----------
    train_probe
        ``(x, y)``: a fixed set of training samples (ideally the size of ``val``, so the null is a
        split-half of equal parts). Every class ``0 .. C-1`` needs at least 2 samples here and in ``val``.
    val
        ``(x, y)`` validation samples.
    config
        :class:`~shiftlab.topology.MonitorConfig` (level, patience, null draws, geometry mode, seed).
    layer
        Name of a sub-module of the ``LightningModule`` (as in ``named_modules()``, e.g. ``"net.2"``) whose
        output is the feature; ``None`` for the module's output.
    prefix
        Prepended to every logged name.
    stop
        Set ``trainer.should_stop`` when the rule fires (``False``: monitor and log only).
    batch_size
        Rows per forward pass during extraction.

    Attributes
    ----------
    monitor
        The :class:`~shiftlab.topology.PHMonitor`; ``monitor.history`` holds every epoch's step on every rank.
        It is not saved in checkpoints: a resumed run starts a fresh count of consecutive alerts.

    Examples
    --------
    >>> import torch
    >>> y = torch.arange(40) % 4
    >>> callback = PHMonitorCallback((torch.randn(40, 6), y), (torch.randn(40, 6), y))
    >>> callback.monitor.config.patience, callback.n_classes
    (3, 4)
    """

    def __init__(
        self,
        train_probe: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        *,
        config: MonitorConfig | None = None,
        layer: str | None = None,
        prefix: str = "ph/",
        stop: bool = True,
        batch_size: int = 1024,
    ) -> None:
        super().__init__()
        xt, yt = _labelled(train_probe, "train_probe")
        xv, yv = _labelled(val, "val")
        if xt.shape[1:] != xv.shape[1:]:
            raise ValueError(
                f"train_probe and val inputs differ in shape: {tuple(xt.shape[1:])} vs {tuple(xv.shape[1:])}"
            )
        c = int(max(int(yt.max()), int(yv.max()))) + 1
        for name, labels in (("train_probe", yt), ("val", yv)):
            short = torch.nonzero(torch.bincount(labels, minlength=c) < 2).flatten().tolist()
            if short:
                raise ValueError(
                    f"{name} needs at least 2 samples of every class 0..{c - 1}; classes {short} lack them"
                )
        if config is not None and not isinstance(config, MonitorConfig):
            raise TypeError(f"config must be a MonitorConfig; got {type(config).__name__}")
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"layer must be a layer name (str) or None; got {type(layer).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
        self.train_probe = (xt, yt)
        self.val = (xv, yv)
        self.n_classes = c
        self.layer = layer
        self.prefix = prefix
        self.stop = bool(stop)
        self.batch_size = batch_size
        self.monitor = PHMonitor(config)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the layer name against the module before the first step."""
        names = {name for name, _ in pl_module.named_modules() if name}
        if self.layer is not None and self.layer not in names:
            shown = ", ".join(sorted(names)[:30])
            raise ValueError(f"unknown layer {self.layer!r}; valid layer names: {shown}")

    def _features(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the train probe and of ``val``: this rank's rows, then all ranks' rows in order."""
        x = torch.cat([self.train_probe[0], self.val[0]])
        rank, world = trainer.global_rank, trainer.world_size
        if x.shape[0] < world:
            raise ValueError(f"{x.shape[0]} probe rows cannot be shared by {world} processes")
        shard = x[rank::world]
        dummy = torch.zeros(shard.shape[0], dtype=torch.int64)
        batches = list(zip(shard.split(self.batch_size), dummy.split(self.batch_size), strict=True))
        local, _ = extract_features(pl_module, batches, layer=self.layer, device=pl_module.device)
        features = _gather_rows(trainer, local, x.shape[0], pl_module.device)
        n_train = self.train_probe[0].shape[0]
        return features[:n_train], features[n_train:]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Update the monitor on all ranks' features, log the step, and apply the stop rule."""
        ft, fv = self._features(trainer, pl_module)
        step = self.monitor.update(ft, self.train_probe[1], fv, self.val[1])
        values = {
            "h0_train": step.h0_train,
            "h0_val": step.h0_val,
            "gap": step.gap,
            "noise_floor": step.noise_floor,
            "p_value": step.p_value,
            "alert": float(step.alert),
            "consecutive": float(step.consecutive),
        }
        for name, value in values.items():
            # identical on every rank (gathered features, same seed): the mean over ranks is the value itself
            pl_module.log(self.prefix + name, value, on_step=False, on_epoch=True, sync_dist=True)
        if step.stop and self.stop:
            trainer.should_stop = True


class LayerMonitorCallback(pl.Callback):
    """Run :class:`~shiftlab.topology.LayerPHMonitor` on a probe batch after each training epoch and log it.

    Logged (epoch level, prefix ``prefix``): ``state`` (:data:`LAYER_STATE_CODES`: 0 HEALTHY, 1 WATCH,
    2 COLLAPSE), ``mean_death`` (the mean H0 merge height of the layers under :math:`1 - \\mathrm{CKA}`,
    absent when a layer is constant over the probe) and ``constant_layers`` (how many are). Under DDP the
    weights are the same on every rank, so the monitor runs on global rank 0 only and logs from there.

    Parameters
    ----------
    layers
        At least 2 names from the ``LightningModule``'s ``named_modules()`` (e.g. ``["net.1", "net.3"]``).
    probe
        A fixed input batch of at least 3 rows.
    config
        :class:`~shiftlab.topology.LayerConfig` (state thresholds).
    prefix
        Prepended to every logged name.

    Examples
    --------
    >>> import torch
    >>> callback = LayerMonitorCallback(["net.1", "net.3"], torch.randn(16, 4))
    >>> callback.monitor.layers
    ('net.1', 'net.3')
    """

    def __init__(
        self,
        layers: Sequence[str],
        probe: torch.Tensor,
        *,
        config: LayerConfig | None = None,
        prefix: str = "layers/",
    ) -> None:
        super().__init__()
        if not isinstance(probe, torch.Tensor) or probe.ndim < 2 or probe.shape[0] < 3:
            raise ValueError("probe must be a tensor batch (n, ...) of at least 3 inputs")
        if not probe.is_floating_point() or not bool(torch.isfinite(probe).all()):
            raise ValueError("probe must be a finite floating-point tensor")
        self.monitor = LayerPHMonitor(layers, config)
        self.probe = probe
        self.prefix = prefix

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the layer names against the module before the first step."""
        names = {name for name, _ in pl_module.named_modules() if name}
        missing = [name for name in self.monitor.layers if name not in names]
        if missing:
            shown = ", ".join(sorted(names)[:30])
            raise ValueError(f"unknown layer(s) {missing}; valid layer names: {shown}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the layer geometry (rank 0) and log it."""
        if not trainer.is_global_zero:
            return
        step = self.monitor.update(pl_module, self.probe)
        values = {
            "state": float(LAYER_STATE_CODES[step.state]),
            "constant_layers": float(len(step.constant_layers)),
        }
        if step.mean_death is not None:
            values["mean_death"] = step.mean_death
        for name, value in values.items():
            # rank_zero_only: no collective (sync_dist only silences Lightning's per-epoch sync advice)
            pl_module.log(
                self.prefix + name, value, on_step=False, on_epoch=True, sync_dist=True, rank_zero_only=True
            )


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
        :class:`~shiftlab.pmh.BudgetSettings` (default :data:`DEFAULT_BUDGET`: penalty capped at 30 % of
        the task loss, 10 % warm-up, no lower end); ``None`` for the plain sum.
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
