"""Weight effective rank (SCI, the structural constraint index) of Linear and Conv layers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.spectra import effective_rank_from_spectrum

__all__ = ["NetworkSCI", "SCISpectrum", "network_sci", "sci", "sci_spectrum"]


def _matrix(weight: ArrayLike) -> torch.Tensor:
    w = as_tensor(weight.detach() if isinstance(weight, torch.Tensor) else weight, name="weight")
    if w.ndim < 2:
        raise ValueError(f"weight must have at least 2 dimensions (out, in, ...); got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"weight must not be empty; got shape {tuple(w.shape)}")
    if bool((w == 0).all()):
        raise ValueError("weight is all zeros: its effective rank is undefined")
    # A convolution kernel (out, in, kh, kw, ...) acts as the matrix (out, in * kh * kw ...).
    return w.reshape(w.shape[0], -1).to(torch.float64)


@dataclass(frozen=True)
class SCISpectrum:
    """Spectral summary of a weight matrix ``W`` (``(out, in)``; convolutions reshaped to ``(out, in*k...)``).

    Attributes
    ----------
    sci
        ``effective_rank / max_rank`` in ``(0, 1]``.
    effective_rank
        :math:`\\exp(-\\sum_i p_i \\log p_i)`, :math:`p_i = \\sigma_i / \\sum_j \\sigma_j`.
    max_rank
        :math:`\\min(\\text{out}, \\text{in})`.
    stable_rank
        :math:`\\lVert W\\rVert_F^2 / \\lVert W\\rVert_2^2`.
    spectral_entropy
        :math:`-\\sum_i p_i \\log p_i` (nats).
    nuclear_norm, spectral_norm
        :math:`\\sum_i \\sigma_i` and :math:`\\sigma_1`.
    """

    sci: float
    effective_rank: float
    max_rank: int
    stable_rank: float
    spectral_entropy: float
    nuclear_norm: float
    spectral_norm: float


def sci_spectrum(weight: ArrayLike) -> SCISpectrum:
    r"""Effective rank, stable rank and norms of a weight matrix from one SVD.

    With singular values :math:`\sigma_1 \ge \dots \ge \sigma_r` of :math:`W` (:math:`r = \min(\text{out},
    \text{in})`), :math:`\operatorname{erank} = \exp(-\sum_i p_i \log p_i)` (Roy & Vetterli 2007,
    :func:`shiftlab.functional.effective_rank`), :math:`\mathrm{SCI} = \operatorname{erank}/r`,
    stable rank :math:`\sum_i \sigma_i^2 / \sigma_1^2`, nuclear norm :math:`\sum_i \sigma_i`, spectral
    norm :math:`\sigma_1`.

    Examples
    --------
    >>> import torch
    >>> s = sci_spectrum(torch.diag(torch.tensor([3.0, 3.0, 0.0])))
    >>> round(s.sci, 4), s.max_rank, round(s.stable_rank, 4), s.nuclear_norm
    (0.6667, 3, 2.0, 6.0)
    """
    w = _matrix(weight)
    s = torch.linalg.svdvals(w)
    erank = float(effective_rank_from_spectrum(s))
    max_rank = min(w.shape)
    return SCISpectrum(
        sci=erank / max_rank,
        effective_rank=erank,
        max_rank=max_rank,
        stable_rank=float((s * s).sum() / s[0] ** 2),
        spectral_entropy=math.log(erank),
        nuclear_norm=float(s.sum()),
        spectral_norm=float(s[0]),
    )


def sci(weight: ArrayLike) -> float:
    r"""Structural constraint index :math:`\operatorname{erank}(W) / \min(\text{out}, \text{in})`, in (0, 1].

    Examples
    --------
    >>> import torch
    >>> sci(torch.eye(4))
    1.0
    """
    return sci_spectrum(weight).sci


@dataclass(frozen=True)
class NetworkSCI:
    """Result of :func:`network_sci`: per-layer spectra (by module name) and their mean SCI."""

    layers: dict[str, SCISpectrum]
    mean_sci: float


def network_sci(model: nn.Module) -> NetworkSCI:
    r"""SCI of every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` weight of ``model``, and their mean.

    Reads the weights only (no forward pass, so BatchNorm statistics play no part); the model is not
    modified.

    Examples
    --------
    >>> from torch import nn
    >>> res = network_sci(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)))
    >>> sorted(res.layers), 0 < res.mean_sci <= 1
    (['0', '2'], True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    layers = {name: sci_spectrum(m.weight) for name, m in model.named_modules() if isinstance(m, kinds)}
    if not layers:
        raise ValueError("model has no nn.Linear or nn.Conv layer")
    return NetworkSCI(layers=layers, mean_sci=sum(s.sci for s in layers.values()) / len(layers))
