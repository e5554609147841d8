r"""Reading a Hugging Face model: a layer by name, a tensor from its output, token-pooled features.

The shared plumbing of the Hugging Face bridge: :func:`hidden_features` (public) and the helpers the PH
monitor callback, the text estimator and the penalty trainer use to find a layer, read the tensor a
layer or model returns (``ModelOutput``, dict, tuple or tensor) and run the model with dropout off.
Needs only torch; the examples build a tiny ``transformers`` BERT.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from shiftlab.pmh._layers import eval_mode

__all__ = [
    "Batch",
    "hidden_features",
    "layer_by_name",
    "leading_tensor",
    "output_tensor",
    "pooled_features",
]

Batch = Mapping[str, Any]


def layer_by_name(model: nn.Module, name: str) -> nn.Module:
    """The sub-module ``name`` of ``model`` (a ``named_modules()`` name); the error lists the valid ones."""
    if not isinstance(name, str):
        raise TypeError(f"layer name must be a str; got {type(name).__name__}")
    modules = dict(model.named_modules())
    modules.pop("", None)
    if name not in modules:
        raise ValueError(f"unknown layer {name!r}; valid names: {', '.join(repr(n) for n in modules)}")
    return modules[name]


def output_tensor(output: Any, key: str) -> torch.Tensor:
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


def leading_tensor(output: Any, name: str) -> torch.Tensor:
    """A layer's main tensor: itself, a tuple's first item or a ``ModelOutput``'s first field."""
    first = next(iter(output.values()), None) if isinstance(output, Mapping) else output
    if isinstance(first, tuple | list) and first:
        first = first[0]
    if not isinstance(first, torch.Tensor):
        raise TypeError(f"layer {name!r} returns {type(output).__name__} without a leading tensor")
    return first


def _model_inputs(batch: Batch, label_key: str, device: torch.device) -> dict[str, Any]:
    return {
        k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != label_key
    }


def pooled_features(
    model: nn.Module, batches: Iterable[Batch], layer: str | None, output_key: str, label_key: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled features and labels, the model run as is (no copy) in eval mode without gradients."""
    target = None if layer is None else layer_by_name(model, layer)
    device = next(model.parameters()).device
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        store["value"] = leading_tensor(out, str(layer))

    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    handle = None if target is None else target.register_forward_hook(hook)
    try:
        with torch.no_grad(), eval_mode(model):
            for batch in batches:
                inputs = _model_inputs(batch, label_key, device)
                out = model(**inputs)
                value = output_tensor(out, output_key) if target is None else store.pop("value")
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
        layer_by_name(model, layer)
    return pooled_features(copy.deepcopy(model), batches, layer, output_key, label_key)
