r"""Text nuisance estimates for a transformer: D7 ``style`` on text pairs, spread over token positions.

:func:`text_style_estimate` estimates Σ at a hidden layer from pairs of texts that say the same thing in
two styles; :func:`lift_to_tokens` turns that per-token estimate into one over a sequence of ``T`` tokens,
the shape :class:`~shiftlab.integrations.huggingface.PMHTrainerMixin` perturbs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from shiftlab.integrations._hf_features import layer_by_name, pooled_features
from shiftlab.pmh import NuisanceEstimate, style

__all__ = ["lift_to_tokens", "text_style_estimate"]


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
    layer_by_name(model, layer)
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
        return pooled_features(work, batches, layer, "logits", "labels")[0]

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
