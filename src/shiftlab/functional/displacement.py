r"""Particle displacement fields that descend Sinkhorn divergences, towards one cloud or several.

Conventions as in :mod:`~shiftlab.functional.transport`; the entropic problems are solved as in
:mod:`~shiftlab.functional.sinkhorn` (float64 log-domain Sinkhorn with :math:`\varepsilon`-annealing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.sinkhorn import _entropic_args, _sinkhorn, _sinkhorn_symmetric
from shiftlab.functional.transport import _clouds, _sqdist, _weights

__all__ = ["multi_sinkhorn_displacement", "sinkhorn_displacement"]


def sinkhorn_displacement(
    x: ArrayLike,
    y: ArrayLike,
    *,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    blur: float = 0.05,
    scaling: float = 0.5,
    max_iter: int = 5000,
    tol: float = 1e-3,
    strict: bool = True,
) -> torch.Tensor:
    r"""Particle displacement descending the Sinkhorn divergence: :math:`T_{\alpha\beta} - T_{\alpha\alpha}`.

    With :math:`T_{\alpha\beta}(x_i) = \sum_j \pi^{\alpha\beta}_{ij} y_j / a_i` the entropic barycentric
    map towards ``y`` and :math:`T_{\alpha\alpha}` the same map of the symmetric problem, the envelope
    theorem gives

    .. math::

        \nabla_{x_i} S_\varepsilon(\alpha, \beta)
        = 2 a_i\,\bigl(T_{\alpha\alpha}(x_i) - T_{\alpha\beta}(x_i)\bigr),

    so the returned field is :math:`-\nabla_{x_i} S_\varepsilon / (2 a_i)`, the Wasserstein-gradient
    step on :math:`\tfrac12 S_\varepsilon` (data units). As blur :math:`\to 0` it tends to the exact
    barycentric displacement :math:`T(x_i) - x_i`.

    Parameters
    ----------
    x, y
        The moving particles ``(n, d)`` and the target ``(m, d)``.
    a, b, blur, scaling, max_iter, tol, strict
        As in :func:`entropic_plan`.

    Returns
    -------
    torch.Tensor
        ``(n, d)`` displacements, computed without autograd.

    Examples
    --------
    >>> v = sinkhorn_displacement([[0.0], [1.0]], [[2.0], [3.0]], blur=0.01)
    >>> v.round(decimals=3)
    tensor([[2.],
            [2.]], dtype=torch.float64)
    """
    yt = as_tensor(y, name="y", ndim=2, min_rows=1)
    bt = None if b is None else as_tensor(b, name="b", ndim=1)
    return _multi_displacement(x, [yt], [1.0], a, [bt], blur, scaling, max_iter, tol, strict)


def multi_sinkhorn_displacement(
    x: ArrayLike,
    ys: Sequence[ArrayLike],
    *,
    weights: Sequence[float] | None = None,
    a: ArrayLike | None = None,
    blur: float = 0.05,
    scaling: float = 0.5,
    max_iter: int = 5000,
    tol: float = 1e-3,
    strict: bool = True,
) -> torch.Tensor:
    r"""Displacement descending a weighted sum of Sinkhorn divergences to several clouds.

    For domains :math:`\beta_1..\beta_K` (uniform weights within each) and weights :math:`w_k` summing to 1,

    .. math::

        -\frac{1}{2a_i}\nabla_{x_i}\sum_k w_k S_\varepsilon(\alpha, \beta_k)
        = \sum_k w_k T_{\alpha\beta_k}(x_i) - T_{\alpha\alpha}(x_i),

    so the symmetric problem of :math:`\alpha` is solved once. This is the multi-marginal term of the
    evidence perturber; with one domain it equals :func:`sinkhorn_displacement`.

    Parameters
    ----------
    x
        ``(n, d)`` particles.
    ys
        Domain clouds ``(m_k, d)``.
    weights
        :math:`w_k` (non-negative, summing to 1; ``None``: equal).
    a, blur, scaling, max_iter, tol, strict
        As in :func:`entropic_plan`.

    Returns
    -------
    torch.Tensor
        ``(n, d)``.

    Examples
    --------
    >>> v = multi_sinkhorn_displacement([[0.0], [1.0]], [[[2.0], [3.0]], [[0.0], [1.0]]], blur=0.01)
    >>> v.round(decimals=3)
    tensor([[1.],
            [1.]], dtype=torch.float64)
    """
    if not isinstance(ys, list | tuple) or not ys:
        raise ValueError("ys must be a non-empty list or tuple of (m_k, d) clouds")
    clouds = [as_tensor(yk, name=f"ys[{k}]", ndim=2, min_rows=1) for k, yk in enumerate(ys)]
    if weights is None:
        w = [1.0 / len(clouds)] * len(clouds)
    else:
        w = [float(v) for v in weights]
        if len(w) != len(clouds) or any(v < 0 for v in w) or abs(sum(w) - 1.0) > 1e-6:
            raise ValueError(
                f"weights must be {len(clouds)} non-negative numbers summing to 1; got {weights!r}"
            )
    return _multi_displacement(x, clouds, w, a, [None] * len(clouds), blur, scaling, max_iter, tol, strict)


def _multi_displacement(
    x: ArrayLike,
    clouds: list[torch.Tensor],
    w: list[float],
    a: ArrayLike | None,
    bs: list[torch.Tensor | None],
    blur: float,
    scaling: float,
    max_iter: int,
    tol: float,
    strict: bool,
) -> torch.Tensor:
    xt = as_tensor(x, name="x", ndim=2, min_rows=1)
    eps, scaling, max_iter, tol, strict = _entropic_args(blur, scaling, max_iter, tol, strict)
    with torch.no_grad():
        x64 = xt.double()
        a64 = _weights(a, x64.shape[0], "a", x64)
        pull = torch.zeros_like(x64)
        for yk, wk, bk in zip(clouds, w, bs, strict=True):
            _, yc = _clouds(xt, yk)
            y64 = yc.double()
            b64 = _weights(bk, y64.shape[0], "b", y64)
            plan = _sinkhorn(_sqdist(x64, y64), a64, b64, eps, scaling, max_iter, tol, strict).plan
            pull = pull + wk * (plan @ y64) / a64[:, None]
        cxx = _sqdist(x64, x64)
        fx = _sinkhorn_symmetric(cxx, a64, eps, scaling, max_iter, tol, strict)
        log_a = a64.log()
        plan_xx = torch.exp(log_a[:, None] + log_a[None, :] + (fx[:, None] + fx[None, :] - cxx) / eps)
        return (pull - (plan_xx @ x64) / a64[:, None]).to(
            xt.dtype if xt.dtype == torch.float64 else torch.float32
        )
