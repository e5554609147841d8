r"""Hugging Face bridge: the PMH penalty inside ``transformers.Trainer`` and the PH monitor as a callback.

* :class:`PMHHFTrainer` (or :class:`PMHTrainerMixin` on any ``Trainer`` subclass) adds
  :math:`c \cdot \mathbb{E}_x \operatorname{tr}(J \Sigma' J^\top)` to the task loss, with the perturbation
  site a named hidden layer of the transformer (``"bert.embeddings"``, ``"bert.encoder.layer.2"``) and the
  model's logits measured; task loss, penalty and applied ratio go through the Trainer's own ``log``.
* :class:`PHMonitorCallback` runs :class:`~shiftlab.topology.PHMonitor` on a train probe against the
  validation set at each epoch end and sets ``control.should_training_stop`` when its stop rule fires.
* :func:`text_style_estimate` is the D7 ``style`` estimator on pairs of texts (same content, other style) at
  a hidden layer; :func:`lift_to_tokens` spreads such a per-token estimate over a sequence.

Needs the ``hf`` extra (``transformers`` and ``accelerate``); tested with transformers 5.24.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    default_data_collator,
)

from shiftlab.pmh import (  # noqa: E402
    MODES,
    PENALTY_ESTIMATORS,
    BudgetEpoch,
    LossBudget,
    NuisanceEstimate,
    PMHPenalty,
    control_estimate,
    style,
)
from shiftlab.topology import MonitorStep, PHMonitor  # noqa: E402

__all__ = [
    "HFPenaltyConfig",
    "PHMonitorCallback",
    "PMHHFTrainer",
    "PMHTrainerMixin",
    "hidden_features",
    "lift_to_tokens",
    "text_style_estimate",
]

Batch = Mapping[str, Any]
_HALF = (torch.float16, torch.bfloat16)


def _module(model: nn.Module, name: str) -> nn.Module:
    if not isinstance(name, str):
        raise TypeError(f"layer name must be a str; got {type(name).__name__}")
    modules = dict(model.named_modules())
    modules.pop("", None)
    if name not in modules:
        raise ValueError(f"unknown layer {name!r}; valid names: {', '.join(repr(n) for n in modules)}")
    return modules[name]


def _pick(output: Any, key: str) -> torch.Tensor:
    """The tensor ``key`` of a ``ModelOutput``/dict, the first item of a tuple, or the tensor itself."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if key not in output or not isinstance(output[key], torch.Tensor):
            raise ValueError(f"the model output has no tensor {key!r}; it has {', '.join(map(str, output))}")
        return output[key]
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot read a tensor from a model output of type {type(output).__name__}")


def _leading(output: Any, name: str) -> torch.Tensor:
    """A layer's main tensor: itself, a tuple's first item or a ``ModelOutput``'s first field."""
    first = next(iter(output.values()), None) if isinstance(output, Mapping) else output
    if isinstance(first, tuple | list) and first:
        first = first[0]
    if not isinstance(first, torch.Tensor):
        raise TypeError(f"layer {name!r} returns {type(output).__name__} without a leading tensor")
    return first


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off inside the block; every sub-module's own train/eval flag is restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _model_inputs(batch: Batch, label_key: str, device: torch.device) -> dict[str, Any]:
    return {
        k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != label_key
    }


def _collect(
    model: nn.Module, batches: Iterable[Batch], layer: str | None, output_key: str, label_key: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled features and labels, the model run as is (no copy) in eval mode without gradients."""
    target = None if layer is None else _module(model, layer)
    device = next(model.parameters()).device
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        store["value"] = _leading(out, str(layer))

    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    handle = None if target is None else target.register_forward_hook(hook)
    try:
        with torch.no_grad(), _eval_mode(model):
            for batch in batches:
                inputs = _model_inputs(batch, label_key, device)
                out = model(**inputs)
                value = _pick(out, output_key) if target is None else store.pop("value")
                mask = inputs.get("attention_mask")
                if value.ndim == 3:  # (B, T, H): masked mean over the tokens
                    if mask is not None and tuple(mask.shape) != tuple(value.shape[:2]):
                        raise ValueError(
                            f"attention_mask has shape {tuple(mask.shape)}; the layer output has "
                            f"{tuple(value.shape[:2])} (batch, tokens): pool another layer"
                        )
                    weights = torch.ones(value.shape[:2], device=value.device) if mask is None else mask
                    w = weights.to(value.dtype).unsqueeze(-1)
                    value = (value * w).sum(1) / w.sum(1).clamp(min=1)
                feats.append(value.reshape(value.shape[0], -1).double().cpu())
                if label_key in batch:
                    labels.append(torch.as_tensor(batch[label_key]).reshape(-1).long().cpu())
    finally:
        if handle is not None:
            handle.remove()
    if not feats:
        raise ValueError("no batches: pass at least one batch")
    return torch.cat(feats), (torch.cat(labels) if labels else None)


def hidden_features(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    layer: str | None = None,
    output_key: str = "logits",
    label_key: str = "labels",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Per-example features of a Hugging Face model: a layer's output mean-pooled over the tokens.

    For a layer output :math:`h \in \mathbb{R}^{B \times T \times H}` and attention mask :math:`m`, row b is
    :math:`\sum_t m_{bt} h_{bt} / \sum_t m_{bt}` (padding excluded); a 2-D output is taken as is. With
    ``layer=None`` the model output ``output_key`` (default the logits) is used. Runs in eval mode without
    gradients on a deep copy (the caller's model is never touched).

    Parameters
    ----------
    model
        A ``transformers`` model (any ``nn.Module`` called with keyword inputs).
    batches
        Iterable of dicts of model inputs, optionally with integer labels under ``label_key``.
    layer
        A ``model.named_modules()`` name, or ``None`` for the output.

    Returns
    -------
    tuple
        float64 ``(n, H)`` features on the CPU and int64 ``(n,)`` labels (``None`` if no batch had them).

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> net = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
    ...                            num_attention_heads=2, intermediate_size=16))
    >>> batch = {"input_ids": torch.tensor([[2, 5, 7], [2, 9, 0]]),
    ...          "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    >>> f, y = hidden_features(net, [batch], layer="encoder.layer.0")
    >>> tuple(f.shape), y is None
    ((2, 8), True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if layer is not None:
        _module(model, layer)
    return _collect(copy.deepcopy(model), batches, layer, output_key, label_key)


def _texts(texts: Any, name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a sequence of strings; got {type(texts).__name__}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"{name} must hold non-empty strings; entry {bad[0]} is {texts[bad[0]]!r}")
    return list(texts)


def text_style_estimate(
    model: nn.Module,
    tokenizer: Callable[..., Any],
    content: Sequence[str],
    styled: Sequence[str],
    *,
    layer: str,
    rank: int | None = None,
    floor: float = 0.0,
    batch_size: int = 32,
    max_length: int = 128,
) -> NuisanceEstimate:
    r"""D7 on text pairs at a hidden layer: :math:`\delta_i = \bar h(s_i) - \bar h(c_i)`.

    :math:`c_i`, :math:`s_i` are the ``content`` and ``styled`` texts, :math:`\bar h` the token mean of
    layer ``layer``'s output (:func:`hidden_features`) and
    :math:`\hat\Sigma = \frac1n \sum_i \delta_i \delta_i^\top` (uncentred, :func:`shiftlab.pmh.style`). The
    estimate lives at ``site=layer`` with shape ``(H,)``: one token's hidden state. Runs on a deep copy.
    :class:`PMHTrainerMixin` applies it to every token of a sequence (:func:`lift_to_tokens`).

    Parameters
    ----------
    model, tokenizer
        A ``transformers`` model and its tokenizer (called with ``padding=True, truncation=True``).
    content, styled
        Paired texts: ``styled[i]`` says what ``content[i]`` says, in the other style. At least 2 pairs.
    layer
        The layer name (as in ``model.named_modules()``).
    rank, floor
        As in :func:`shiftlab.pmh.style`.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> net = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
    ...                            num_attention_heads=2, intermediate_size=16))
    >>> tok = lambda texts, **kw: {"input_ids": torch.tensor([[2 + len(t) % 20] for t in texts])}
    >>> est = text_style_estimate(net, tok, ["Good morning.", "Thank you."], ["morning!!", "thx"],
    ...                           layer="encoder.layer.0", rank=1)
    >>> est.site, est.shape, est.rank
    ('encoder.layer.0', (8,), 1)
    """
    first = _texts(content, "content")
    second = _texts(styled, "styled")
    if len(first) != len(second) or len(first) < 2:
        raise ValueError(
            f"need at least 2 pairs, paired row by row; got {len(first)} and {len(second)} texts"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    _module(model, layer)
    work = copy.deepcopy(model)

    def encode(texts: list[str]) -> torch.Tensor:
        batches = (
            tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            for i in range(0, len(texts), batch_size)
        )
        return _collect(work, batches, layer, "logits", "labels")[0]

    est = style(encode(first), encode(second), rank=rank, floor=floor)
    return dataclasses.replace(est, site=layer)


def lift_to_tokens(estimate: NuisanceEstimate, seq_len: int) -> NuisanceEstimate:
    r"""Spread a per-token Σ (shape ``(H,)``) over ``T`` token positions (shape ``(T, H)``).

    The low-rank part moves every token by the **same** displacement (the reading of a D7 estimate of mean-
    pooled states: shifting each token by δ shifts the mean by δ); the floor stays independent per token:

    .. math:: \Sigma_T = (\mathbf{1}_T \mathbf{1}_T^\top) \otimes F F^\top + \sigma^2 I_{TH},
              \qquad F_T = \mathbf{1}_T \otimes F,
              \qquad \operatorname{tr}\Sigma_T = T \operatorname{tr}\Sigma .

    The spectrum becomes :math:`T\lambda_i` and the signal basis :math:`\mathbf{1}_T \otimes S / \sqrt{T}`.
    An estimate that already has shape ``(T, H)`` is returned unchanged.

    Examples
    --------
    >>> f = torch.tensor([[1.0], [0.0]])
    >>> est = NuisanceEstimate(f, 0.0, torch.tensor([1.0, 0.0]), "bert.embeddings", (2,), "style", {})
    >>> lifted = lift_to_tokens(est, 3)
    >>> lifted.shape, lifted.factor.flatten().tolist(), lifted.trace
    ((3, 2), [1.0, 0.0, 1.0, 0.0, 1.0, 0.0], 3.0)
    """
    if not isinstance(estimate, NuisanceEstimate):
        raise TypeError(f"estimate must be a NuisanceEstimate; got {type(estimate).__name__}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1; got {seq_len!r}")
    if len(estimate.shape) == 2:
        if estimate.shape[0] != seq_len:
            raise ValueError(
                f"the estimate covers {estimate.shape[0]} token positions; this batch has {seq_len}: "
                "pad to that length or estimate per token (shape (H,))"
            )
        return estimate
    if len(estimate.shape) != 1:
        raise ValueError(f"a token estimate has shape (H,) or (T, H); got {estimate.shape}")
    signal = None if estimate.signal is None else estimate.signal.repeat(seq_len, 1) / math.sqrt(seq_len)
    return dataclasses.replace(
        estimate,
        factor=estimate.factor.repeat(seq_len, 1),
        spectrum=estimate.spectrum * seq_len,
        shape=(seq_len, estimate.shape[0]),
        signal=signal,
    )


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
        value = _leading(out, site)
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
        return _pick(out, output_key)

    handles = [
        net.register_forward_pre_hook(before, with_kwargs=True),
        _module(net, site).register_forward_hook(check),
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
        _module(model, nuisance.site)
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
            _eval_mode(net),
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
        """Add the PMH means since the last training log and pending PH monitor values, then log once."""
        if "loss" in logs and self._pmh_steps:
            logs.update({k: v / self._pmh_steps for k, v in self._pmh_sums.items()})
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


def _labels(data: Sequence[Batch], key: str, name: str) -> torch.Tensor:
    if not isinstance(data, Sequence) or len(data) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of examples (dicts)")
    try:
        labels = torch.tensor([int(torch.as_tensor(item[key])) for item in data])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"every example of {name} needs an integer label under {key!r}") from error
    return labels


class PHMonitorCallback(TrainerCallback):
    """Epoch-end H0 overfitting monitor (:class:`~shiftlab.topology.PHMonitor`) that can stop training.

    At each epoch end the class geometry of a fixed probe of training examples and of the validation
    examples is computed from the model's features (the logits, or a named layer mean-pooled over tokens,
    see :func:`hidden_features`); the monitor compares their H0 against its split null and, when its rule
    fires (``patience`` consecutive alerts), the callback sets ``control.should_training_stop``. The
    model is run in eval mode without gradients and its flags are restored. H0 of both sets, the gap, the
    noise floor, the p-value and the alert go into the next training log of a :class:`PMHTrainerMixin`
    trainer (``ph_*``; the callback asks for a log at every epoch end); ``history`` holds every
    :class:`~shiftlab.topology.MonitorStep` with any Trainer.

    Parameters
    ----------
    probe, validation
        Examples (dicts of model inputs plus an integer label under ``label_key``); every class needs at
        least 2 examples in each. The probe should be training examples, about as many as ``validation``.
    monitor
        A :class:`~shiftlab.topology.PHMonitor` (default: its default config: α = 0.05, patience 3).
    layer
        Layer whose (token-mean) output is the feature; ``None`` for the output ``output_key``.
    batch_size, collate_fn
        How examples are batched (default ``transformers.default_data_collator``).

    Examples
    --------
    >>> data = [{"input_ids": torch.tensor([2, i % 5 + 3]), "labels": i % 2} for i in range(8)]
    >>> callback = PHMonitorCallback(data[:4], data[4:])
    >>> callback.history, callback.stopped_at_epoch
    ([], None)
    """

    def __init__(
        self,
        probe: Sequence[Batch],
        validation: Sequence[Batch],
        *,
        monitor: PHMonitor | None = None,
        layer: str | None = None,
        batch_size: int = 32,
        collate_fn: Callable[[list[Any]], Batch] | None = None,
        label_key: str = "labels",
        output_key: str = "logits",
    ) -> None:
        counts = [
            torch.bincount(_labels(d, label_key, n))
            for d, n in ((probe, "probe"), (validation, "validation"))
        ]
        if counts[0].shape != counts[1].shape or bool((counts[0] != 0).ne(counts[1] != 0).any()):
            raise ValueError("probe and validation must hold the same classes")
        present = counts[0] > 0
        if int(present.sum()) < 2 or bool((counts[0][present] < 2).any() | (counts[1][present] < 2).any()):
            raise ValueError(
                "need at least 2 classes, each with at least 2 examples in probe and in validation"
            )
        if monitor is not None and not isinstance(monitor, PHMonitor):
            raise TypeError(f"monitor must be a PHMonitor; got {type(monitor).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
        self.probe = probe
        self.validation = validation
        self.monitor = PHMonitor() if monitor is None else monitor
        self.layer = layer
        self.batch_size = batch_size
        self.collate_fn = default_data_collator if collate_fn is None else collate_fn
        self.label_key = label_key
        self.output_key = output_key
        self.stopped_at_epoch: int | None = None
        self._pending: dict[str, float] = {}

    @property
    def history(self) -> list[MonitorStep]:
        """The monitor's steps, one per epoch end."""
        return self.monitor.history

    def pop_logs(self) -> dict[str, float]:
        """The latest epoch's values not yet logged (empty after the first call)."""
        pending, self._pending = self._pending, {}
        return pending

    def _batches(self, data: Sequence[Batch]) -> Iterator[Batch]:
        for start in range(0, len(data), self.batch_size):
            yield self.collate_fn([data[i] for i in range(start, min(start + self.batch_size, len(data)))])

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        if self.layer is not None and isinstance(model, nn.Module):
            _module(model, self.layer)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        model = kwargs.get("model")
        if not isinstance(model, nn.Module):
            raise TypeError("the Trainer passed no model to the callback")
        ft, yt = _collect(model, self._batches(self.probe), self.layer, self.output_key, self.label_key)
        fv, yv = _collect(model, self._batches(self.validation), self.layer, self.output_key, self.label_key)
        if yt is None or yv is None:
            raise ValueError(
                f"the collated batches carry no {self.label_key!r}: keep the labels in collate_fn"
            )
        step = self.monitor.update(ft, yt, fv, yv)
        self._pending = {
            "ph_h0_train": step.h0_train,
            "ph_h0_val": step.h0_val,
            "ph_gap": step.gap,
            "ph_noise_floor": step.noise_floor,
            "ph_p_value": step.p_value,
            "ph_alert": float(step.alert),
        }
        control.should_log = True
        if step.stop:
            control.should_training_stop = True
            self.stopped_at_epoch = step.epoch
        return control
