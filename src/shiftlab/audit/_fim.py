"""FIM_norm: the normalised effective rank of the empirical Fisher information (gradient effective rank)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from shiftlab.functional._convert import ArrayLike
from shiftlab.functional.per_sample import LossFn, per_sample_gradient_gram
from shiftlab.functional.spectra import effective_rank_from_spectrum

__all__ = ["FIMNorm", "fim_norm"]


@dataclass(frozen=True)
class FIMNorm:
    """Result of :func:`fim_norm`.

    Attributes
    ----------
    value
        FIM_norm, :math:`\\operatorname{erank}(F) / N` in :math:`(1/N, 1]`.
    effective_rank
        :math:`\\operatorname{erank}(F)` in :math:`[1, \\min(N, P)]`.
    n
        Number of samples :math:`N` the value was computed at; FIM_norm values are comparable only at
        equal ``n``.
    n_parameters
        Number of trainable parameters :math:`P`.
    fisher_trace
        :math:`\\operatorname{tr} F = \\frac{1}{N}\\sum_i \\lVert g_i\\rVert^2`, the mean squared per-sample
        gradient norm (a magnitude, unlike the effective rank, which is scale-free).
    method
        ``"vmap"`` or ``"linear"`` (the Gram identity).
    """

    value: float
    effective_rank: float
    n: int
    n_parameters: int
    fisher_trace: float
    method: str


def fim_norm(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: ArrayLike,
    targets: ArrayLike,
    n: int = 256,
    *,
    method: Literal["auto", "vmap", "linear"] = "auto",
    chunk_size: int | None = 64,
    seed: int = 0,
) -> FIMNorm:
    r"""Gradient effective rank of a model at ``n`` samples, normalised by ``n`` (FIM_norm).

    With per-sample loss gradients :math:`g_1, \dots, g_N` (rows of :math:`G`, computed on a deep copy of
    the model in eval mode) and the empirical Fisher :math:`F = G^\top G / N`, whose nonzero eigenvalues
    :math:`\lambda_k` are those of the dual :math:`G G^\top / N`,

    .. math::

        p_k = \frac{\lambda_k}{\sum_j \lambda_j}, \qquad
        \operatorname{erank}(F) = \exp\Big(-\sum_k p_k \log p_k\Big), \qquad
        \mathrm{FIM\_norm} = \frac{\operatorname{erank}(F)}{N} \in \Big(\frac{1}{N}, 1\Big].

    Eigenvalues that are negative only at the round-off level of the parameters' dtype
    (:math:`|\lambda| \le 10 N \varepsilon \lambda_{\max}`) count as zero; anything more negative raises.

    **The value depends on N**: the effective rank is at most :math:`\min(N, P)`, and dividing by
    :math:`N` does not make values at different :math:`N` comparable (it tends to fall as :math:`N`
    grows). Always report it at a fixed ``n``; this function refuses to use fewer samples than asked.

    Parameters
    ----------
    model
        The network; never modified.
    loss_fn
        Loss of a batch, scalar, called on one sample at a time (e.g.
        :func:`torch.nn.functional.cross_entropy`).
    inputs, targets
        A pool of at least ``n`` samples; ``n`` of them are drawn without replacement with ``seed`` (all of
        them, in order, when the pool holds exactly ``n``).
    n
        Number of samples :math:`N`.
    method
        ``"vmap"`` (per-sample gradients by :mod:`torch.func`, any model), ``"linear"`` (the Gram identity:
        every trainable parameter in an ``nn.Linear``; :math:`G` is never formed), or ``"auto"``
        (``"linear"`` when the model qualifies, else ``"vmap"``).
    chunk_size
        Samples per vectorised chunk of the ``"vmap"`` path.
    seed
        Seed of the sample draw.

    Returns
    -------
    FIMNorm

    Raises
    ------
    ValueError
        Fewer than ``n`` samples, ``n < 2``, all per-sample gradients zero.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    >>> x, t = torch.randn(100, 8), torch.randint(0, 3, (100,))
    >>> res = fim_norm(model, nn.functional.cross_entropy, x, t, n=32)
    >>> res.n, res.method, 1 / 32 < res.value <= 1
    (32, 'linear', True)
    """
    if method not in ("auto", "vmap", "linear"):
        raise ValueError(f"method must be 'auto', 'vmap' or 'linear'; got {method!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2; got {n!r}")
    pool = inputs.shape[0] if isinstance(inputs, torch.Tensor) else len(inputs)
    if pool < n:
        raise ValueError(
            f"fim_norm at n={n} needs at least {n} samples; got {pool}. FIM_norm depends on n, so it is "
            "not computed at a smaller n silently: pass more samples or a smaller n for every model"
        )
    x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(inputs)
    t = targets if isinstance(targets, torch.Tensor) else torch.as_tensor(targets)
    if t.shape[0] != pool:
        raise ValueError(f"targets must have one entry per input ({pool}); got {t.shape[0]}")
    if pool > n:
        pick = torch.randperm(pool, generator=torch.Generator().manual_seed(seed))[:n]
        x, t = x[pick.to(x.device)], t[pick.to(t.device)]
    if method == "auto":
        method = "linear" if _linear_only(model) else "vmap"
    gram = per_sample_gradient_gram(model, loss_fn, x, t, method=method, chunk_size=chunk_size)
    eigenvalues = torch.linalg.eigvalsh(gram / n)
    top = float(eigenvalues.max())
    if top <= 0:
        raise ValueError("all per-sample gradients are zero: the effective rank is undefined")
    # The Gram matrix is positive semi-definite; its entries carry the round-off of the gradients' dtype
    # (float32 for a float32 model), so eigenvalues down to -10 N eps(dtype) lambda_max are zeros.
    dtype = next(p.dtype for p in model.parameters() if p.requires_grad)
    tol = 10 * n * float(torch.finfo(dtype).eps) * top
    if float(eigenvalues.min()) < -tol:
        raise ValueError(
            f"the per-sample gradient Gram matrix has an eigenvalue {float(eigenvalues.min()):.3g} below the "
            f"round-off level -{tol:.3g}: the gradients are not finite-precision consistent"
        )
    erank = float(effective_rank_from_spectrum(eigenvalues.clamp(min=0.0)))
    return FIMNorm(
        value=erank / n,
        effective_rank=erank,
        n=n,
        n_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        fisher_trace=float(torch.trace(gram)) / n,
        method=method,
    )


def _linear_only(model: nn.Module) -> bool:
    """Every trainable parameter belongs to an ``nn.Linear`` and no Linear module appears twice."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    owned = {id(p) for m in linears for p in m.parameters(recurse=False)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return bool(trainable) and all(id(p) in owned for p in trainable)
