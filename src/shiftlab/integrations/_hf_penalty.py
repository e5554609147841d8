r"""The PMH penalty at a named hidden layer inside ``transformers.Trainer.compute_loss``.

:class:`HFPenaltyConfig` says how the penalty is applied; :class:`PMHTrainerMixin` adds it to any
``Trainer`` subclass (:class:`PMHHFTrainer` is the plain ``Trainer`` with it).
:class:`~shiftlab.pmh.PMHPenalty` calls ``net(x)`` on a tensor, but a transformer takes a dict of token
inputs: during the penalty pass ``_tensor_io`` turns a placeholder batch (the carrier, whose row count says
how many rows to use) into the stored inputs, and the model output into the measured tensor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from shiftlab.integrations._optional import require

require("transformers", "hf")

from transformers import (  # noqa: E402 - after the check that names the extra
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from shiftlab.integrations._hf_features import (  # noqa: E402
    Batch,
    layer_by_name,
    leading_tensor,
    output_tensor,
)
from shiftlab.integrations._hf_monitor import PHMonitorCallback  # noqa: E402
from shiftlab.integrations._hf_text import lift_to_tokens  # noqa: E402
from shiftlab.pmh import (  # noqa: E402
    MODES,
    PENALTY_ESTIMATORS,
    BudgetEpoch,
    LossBudget,
    NuisanceEstimate,
    PMHPenalty,
    control_estimate,
)
from shiftlab.pmh._layers import eval_mode  # noqa: E402

__all__ = ["HFPenaltyConfig", "PMHHFTrainer", "PMHTrainerMixin"]

_HALF = (torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class HFPenaltyConfig:
    """How :class:`PMHTrainerMixin` applies the penalty.

    Attributes
    ----------
    strength
        λ ≥ 0 (with a :class:`~shiftlab.pmh.LossBudget`, the coefficient it rescales).
    mode
        ``"matched"``, or a falsification control ``"isotropic"``/``"wrong"``/``"signal"`` built from the
        per-token estimate before it is spread over the tokens.
    estimator
        ``"fd"`` (default: one extra forward pass per probe; works with every attention implementation and
        normalisation layer), ``"jvp"`` or ``"hutchinson"`` (forward-mode AD: needs
        ``attn_implementation="eager"``, since the fused ``sdpa`` kernels of torch 2.13 have no forward-mode
        derivative, and no ``nn.LayerNorm``, whose JVP torch differentiates wrongly: the penalty's value is
        right but its gradient is not, pytorch/pytorch#196700; refused when found).
    n_probes, fd_step, seed
        As in :class:`~shiftlab.pmh.PMHPenalty`.
    fraction
        Share of each batch (its first rows) the penalty is computed on, in (0, 1].
    length_key
        Input whose second dimension is the sequence length ``T`` of the site.
    output_key
        Model output measured by the penalty (default the logits).
    """

    strength: float = 1.0
    mode: str = "matched"
    estimator: str = "fd"
    n_probes: int = 1
    fd_step: float = 1e-2
    seed: int = 0
    fraction: float = 1.0
    length_key: str = "input_ids"
    output_key: str = "logits"

    def __post_init__(self) -> None:
        if isinstance(self.strength, bool) or not (
            isinstance(self.strength, int | float) and math.isfinite(self.strength) and self.strength >= 0
        ):
            raise ValueError(f"strength must be a finite number >= 0; got {self.strength!r}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.estimator not in PENALTY_ESTIMATORS:
            raise ValueError(
                f"unknown estimator {self.estimator!r}; choose one of {', '.join(PENALTY_ESTIMATORS)}"
            )
        if isinstance(self.n_probes, bool) or not isinstance(self.n_probes, int) or self.n_probes < 1:
            raise ValueError(f"n_probes must be an int >= 1; got {self.n_probes!r}")
        if not (isinstance(self.fraction, int | float) and 0 < self.fraction <= 1):
            raise ValueError(f"fraction must lie in (0, 1]; got {self.fraction!r}")
        if not (isinstance(self.fd_step, int | float) and math.isfinite(self.fd_step) and self.fd_step > 0):
            raise ValueError(f"fd_step must be a finite number > 0; got {self.fd_step!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0; got {self.seed!r}")
        for name in ("length_key", "output_key"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str; got {type(getattr(self, name)).__name__}")


@contextlib.contextmanager
def _tensor_io(
    net: nn.Module, inputs: Batch, batch: int, site: str, site_shape: tuple[int, ...], output_key: str
) -> Iterator[None]:
    """Within the block, ``net(carrier)`` runs ``net(**inputs)`` on the carrier's first rows and returns
    the tensor ``output_key``; the site must run once per pass and return ``(rows, *site_shape)``."""
    calls = [0]

    def before(_m: nn.Module, args: tuple[Any, ...], _kw: dict[str, Any]) -> tuple[tuple[()], dict[str, Any]]:
        calls[0] = 0
        rows = args[0].shape[0]
        return (), {
            k: v[:rows] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == batch else v
            for k, v in inputs.items()
        }

    def check(_m: nn.Module, _i: Any, out: Any) -> None:
        calls[0] += 1
        value = leading_tensor(out, site)
        if tuple(value.shape[1:]) != site_shape:
            raise ValueError(
                f"layer {site!r} gives per-example shape {tuple(value.shape[1:])}; "
                f"the estimate needs {site_shape}"
            )

    def after(_m: nn.Module, _i: Any, out: Any) -> torch.Tensor:
        if calls[0] != 1:
            raise ValueError(
                f"layer {site!r} ran {calls[0]} times in one forward pass; choose one that runs once"
            )
        return output_tensor(out, output_key)

    handles = [
        net.register_forward_pre_hook(before, with_kwargs=True),
        layer_by_name(net, site).register_forward_hook(check),
        net.register_forward_hook(after),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


if TYPE_CHECKING:
    _TrainerBase = Trainer
else:
    _TrainerBase = object


class PMHTrainerMixin(_TrainerBase):
    r"""Adds the PMH penalty at a named hidden layer to any ``transformers.Trainer``'s training loss.

    Each training call of ``compute_loss`` returns

    .. math:: L = L_{task} + c \cdot \frac{1}{k}\sum_{b \le k} \operatorname{tr}(J_b \Sigma_T J_b^\top),
              \qquad J_b = \partial\, \text{logits}_b / \partial h_b^{site},

    with :math:`L_{task}` the Trainer's own loss as a per-batch mean (gradient accumulation then divides
    the sum, ``loss_is_scaled_for_ga = False``), :math:`\Sigma_T` the arm's per-token estimate spread over
    the batch's ``T`` tokens (:func:`lift_to_tokens`), :math:`k` the first ``ceil(fraction B)`` rows, and
    :math:`c = \lambda` or the :class:`~shiftlab.pmh.LossBudget` coefficient. The penalty pass runs with
    dropout off (the deployed network's Jacobian; with dropout on, finite differences would difference two
    dropout masks) and without autocast (finite differences need the weights' precision); the task pass is
    the Trainer's, unchanged. Evaluation losses carry no penalty.

    The mean task loss, raw penalty and applied ratio :math:`cP/L_{task}` since the last log are added to
    the Trainer's own training log (``pmh_task_loss``, ``pmh_penalty``, ``pmh_ratio``; the Trainer's ``loss``
    is the total), together with the latest :class:`PHMonitorCallback` values: one record per logging
    event, through the Trainer's reporters only. With a budget, its per-epoch records are in
    ``pmh_epochs``.

    Parameters
    ----------
    *args, **kwargs
        The Trainer's own arguments (``model`` first).
    nuisance
        The matched :class:`~shiftlab.pmh.NuisanceEstimate`; its ``site`` names the layer perturbed and its
        shape is ``(H,)`` (one token, e.g. from :func:`text_style_estimate`) or ``(T, H)``.
    pmh
        :class:`HFPenaltyConfig` (defaults: λ = 1, matched, finite differences, one probe).
    budget
        Optional :class:`~shiftlab.pmh.LossBudget`; started with the run's number of ``compute_loss`` calls.

    Examples
    --------
    >>> import tempfile
    >>> from transformers import BertConfig, BertForSequenceClassification, PrinterCallback, TrainingArguments
    >>> net = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=16, num_labels=2))
    >>> est = NuisanceEstimate(torch.eye(8)[:, :1], 0.0, torch.tensor([1.0, 0.0]),
    ...                        "bert.embeddings", (8,), "demo", {})
    >>> data = [{"input_ids": torch.tensor([2, i % 7 + 3, 4]), "labels": i % 2} for i in range(8)]
    >>> args = TrainingArguments(tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=4,
    ...     report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1)
    >>> trainer = PMHHFTrainer(model=net, args=args, train_dataset=data, nuisance=est)
    >>> trainer.remove_callback(PrinterCallback)  # keep the doctest's output quiet
    >>> _ = trainer.train()
    >>> sum("pmh_penalty" in record for record in trainer.state.log_history)
    2
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        nuisance: NuisanceEstimate,
        pmh: HFPenaltyConfig | None = None,
        budget: LossBudget | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(nuisance, NuisanceEstimate):
            raise TypeError(f"nuisance must be a NuisanceEstimate; got {type(nuisance).__name__}")
        if nuisance.site in ("input", "output"):
            raise ValueError(
                f"the estimate lives at {nuisance.site!r}; token ids are discrete, so perturb a named hidden "
                "layer (estimate there, e.g. with text_style_estimate(..., layer='bert.encoder.layer.2'))"
            )
        config = HFPenaltyConfig() if pmh is None else pmh
        if not isinstance(config, HFPenaltyConfig):
            raise TypeError(f"pmh must be an HFPenaltyConfig; got {type(config).__name__}")
        if budget is not None and not isinstance(budget, LossBudget):
            raise TypeError(f"budget must be a LossBudget or None; got {type(budget).__name__}")
        model = kwargs.get("model", args[0] if args else None)
        if not isinstance(model, nn.Module):
            raise TypeError("pass the model to train (model=...) to check the penalty's layer by name")
        layer_by_name(model, nuisance.site)
        attention = getattr(getattr(model, "config", None), "_attn_implementation", "eager")
        if config.estimator != "fd" and attention != "eager":
            raise ValueError(
                f"estimator={config.estimator!r} uses forward-mode AD, which {attention!r} attention lacks; "
                "load the model with attn_implementation='eager' or use estimator='fd'"
            )
        if config.estimator != "fd" and any(isinstance(m, nn.LayerNorm) for m in model.modules()):
            raise ValueError(
                f"estimator={config.estimator!r} would train on wrong gradients: torch's layer_norm JVP "
                "is not correctly differentiable (pytorch/pytorch#196700, #198017) and this model has "
                "nn.LayerNorm; use estimator='fd'"
            )
        if len(nuisance.shape) not in (1, 2):
            raise ValueError(f"a token estimate has shape (H,) or (T, H); got {nuisance.shape}")
        if config.estimator == "fd" and any(p.dtype in _HALF for p in model.parameters()):
            raise ValueError(
                "finite differences in 16-bit floats lose the penalty to round-off: keep the weights in "
                "float32 (mixed precision is fine: the penalty pass runs without autocast)"
            )
        self._pmh_arm = control_estimate(nuisance, config.mode, seed=config.seed)
        super().__init__(*args, **kwargs)
        self.pmh_nuisance = nuisance
        self.pmh_config = config
        self.pmh_budget = budget
        self.pmh_epochs: list[BudgetEpoch] = []
        self._pmh_probe_seeds = torch.Generator().manual_seed(config.seed)
        self._pmh_sums = {"pmh_task_loss": 0.0, "pmh_penalty": 0.0, "pmh_ratio": 0.0}
        self._pmh_steps = 0
        self.add_callback(_BudgetCallback(self))

    def _pmh_penalty(self, model: nn.Module, inputs: Batch) -> torch.Tensor:
        cfg = self.pmh_config
        net = self.accelerator.unwrap_model(model)
        lengths = inputs.get(cfg.length_key)
        if not isinstance(lengths, torch.Tensor) or lengths.ndim < 2:
            raise ValueError(
                f"the batch needs a (B, T) tensor {cfg.length_key!r} to read the sequence length"
            )
        batch, seq_len = int(lengths.shape[0]), int(lengths.shape[1])
        arm = lift_to_tokens(self._pmh_arm, seq_len)
        seed = int(torch.randint(0, 2**62, (1,), generator=self._pmh_probe_seeds))
        penalty = PMHPenalty(
            arm, estimator=cfg.estimator, n_probes=cfg.n_probes, fd_step=cfg.fd_step, seed=seed
        ).to(lengths.device)
        dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
        carrier = torch.zeros(max(1, math.ceil(cfg.fraction * batch)), 1, dtype=dtype, device=lengths.device)
        model_inputs = {k: v for k, v in inputs.items() if k not in self.label_names}
        with (
            eval_mode(net),
            torch.autocast(lengths.device.type, enabled=False),
            _tensor_io(net, model_inputs, batch, arm.site, arm.shape, cfg.output_key),
        ):
            return penalty(net, carrier).value

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The Trainer's loss plus the penalty in training; unchanged in evaluation."""
        if not (model.training and torch.is_grad_enabled()):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        penalty = self._pmh_penalty(model, inputs)
        result = super().compute_loss(model, inputs, return_outputs=True)
        assert isinstance(result, tuple)
        task, outputs = result
        cfg = self.pmh_config
        if self.pmh_budget is None:
            loss = task + cfg.strength * penalty
        else:
            loss = self.pmh_budget.combine(task, penalty, cfg.strength)
        task_value = float(task.detach())
        self._pmh_sums["pmh_task_loss"] += task_value
        self._pmh_sums["pmh_penalty"] += float(penalty.detach())
        extra = float(loss.detach()) - task_value
        self._pmh_sums["pmh_ratio"] += extra / task_value if task_value > 0 else 0.0
        self._pmh_steps += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the PMH means since the last training log (averaged over processes) and pending PH monitor
        values, then log once."""
        if "loss" in logs and self._pmh_steps:
            means = torch.tensor([v / self._pmh_steps for v in self._pmh_sums.values()], dtype=torch.float64)
            if self.args.world_size > 1:  # every rank logs here: the mean over ranks, as the Trainer's loss
                means = self.accelerator.reduce(means.to(self.accelerator.device), reduction="mean").cpu()
            logs.update(dict(zip(self._pmh_sums, means.tolist(), strict=True)))
            self._pmh_sums = dict.fromkeys(self._pmh_sums, 0.0)
            self._pmh_steps = 0
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, PHMonitorCallback):
                logs.update(callback.pop_logs())
        super().log(logs, start_time)


class PMHHFTrainer(PMHTrainerMixin, Trainer):
    """``transformers.Trainer`` with the PMH penalty: see :class:`PMHTrainerMixin` (example there)."""


class _BudgetCallback(TrainerCallback):
    """Starts, closes per epoch and finishes the trainer's :class:`~shiftlab.pmh.LossBudget`."""

    def __init__(self, trainer: PMHTrainerMixin) -> None:
        self._trainer = trainer

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._trainer.pmh_budget is not None:
            self._trainer.pmh_budget.start(max(1, state.max_steps * args.gradient_accumulation_steps))

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._trainer.pmh_budget is not None:
            self._trainer.pmh_epochs.append(self._trainer.pmh_budget.end_epoch())

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._trainer.pmh_budget is not None:
            self._trainer.pmh_budget.finish()
