r"""Quantile functions of :mod:`shiftlab.functional.quantile`: the target's :math:`Q`, the empirical Hazen
quantiles of a sample, and the nondecreasing piecewise-linear map through quantile knots (the eval-mode map
of the layers and the interpolation of tensor targets). Re-exported by the quantile module.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.distributions import Distribution

from shiftlab.functional._convert import ArrayLike, as_tensor

#: Named targets: uniform on :math:`[-\sqrt3, \sqrt3]` (unit variance), standard normal, standard Cauchy.
TARGET_NAMES = ("uniform", "gaussian", "cauchy")
Target = str | Distribution | torch.Tensor


def knot_levels(n: int, *, dtype: torch.dtype = torch.float64, device: Any = None) -> torch.Tensor:
    r"""Hazen plotting positions :math:`p_k = (k + 1/2)/n`, :math:`k = 0, \dots, n-1`.

    Examples
    --------
    >>> knot_levels(4)
    tensor([0.1250, 0.3750, 0.6250, 0.8750], dtype=torch.float64)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    return (torch.arange(n, dtype=dtype, device=device) + 0.5) / n


def _check_target(target: Target) -> None:
    if isinstance(target, str):
        if target not in TARGET_NAMES:
            raise ValueError(f"unknown target {target!r}; valid names: {', '.join(TARGET_NAMES)}")
    elif isinstance(target, Distribution):
        if tuple(target.batch_shape) != () or tuple(target.event_shape) != ():
            raise ValueError(
                "a distribution target must be scalar (batch_shape and event_shape ()); got "
                f"{tuple(target.batch_shape)} and {tuple(target.event_shape)}"
            )
    elif isinstance(target, torch.Tensor):
        if target.ndim != 1 or target.shape[0] < 2:
            raise ValueError(f"a tensor target must be 1-D with >= 2 quantiles; got {tuple(target.shape)}")
        if not target.is_floating_point() or not bool(torch.isfinite(target).all()):
            raise ValueError("a tensor target must hold finite floating-point quantiles")
        if bool((target[1:] < target[:-1]).any()):
            raise ValueError("a tensor target must be nondecreasing (quantiles at levels (k+0.5)/K)")
    else:
        raise TypeError(
            f"target must be one of {TARGET_NAMES}, a torch.distributions.Distribution with icdf, or a "
            f"1-D tensor of quantiles; got {type(target).__name__}"
        )


def target_quantiles(target: Target, levels: ArrayLike) -> torch.Tensor:
    r"""The target quantile function :math:`Q(u)` at ``levels`` in (0, 1).

    Names: ``"uniform"`` :math:`Q(u) = \sqrt3\,(2u - 1)`, ``"gaussian"`` :math:`\Phi^{-1}(u)`,
    ``"cauchy"`` :math:`\tan(\pi(u - 1/2))`. A scalar ``torch.distributions`` object uses its ``icdf``.
    A 1-D nondecreasing tensor :math:`q_0 \le \dots \le q_{K-1}` gives the quantiles at
    :math:`(k + 1/2)/K`; :math:`Q` interpolates them linearly and extends the end segments linearly
    (differentiable in the tensor, which is how a learnable target trains).

    Parameters
    ----------
    target
        A name in :data:`TARGET_NAMES`, a scalar distribution, or a tensor of quantiles.
    levels
        Values strictly inside (0, 1), any shape.

    Returns
    -------
    torch.Tensor
        Same shape as ``levels``; float64 for names and distributions, the tensor's dtype otherwise.

    Examples
    --------
    >>> target_quantiles("gaussian", [0.5, 0.975]).round(decimals=3)
    tensor([0.0000, 1.9600], dtype=torch.float64)
    >>> target_quantiles(torch.tensor([-1.0, 1.0]), [0.25, 0.5])
    tensor([-1.,  0.])
    """
    _check_target(target)
    u = as_tensor(levels, name="levels")
    if bool(((u <= 0) | (u >= 1)).any()):
        raise ValueError("levels must lie strictly inside (0, 1)")
    if isinstance(target, torch.Tensor):
        p = knot_levels(target.shape[0], dtype=target.dtype, device=target.device)
        flat = u.to(device=target.device, dtype=target.dtype).reshape(1, -1)
        return interp_map(flat, p.unsqueeze(0), target.unsqueeze(0)).reshape(u.shape)
    u = u.to(torch.float64)
    if target == "uniform":
        return math.sqrt(3.0) * (2.0 * u - 1.0)
    if target == "gaussian":
        return torch.special.ndtri(u)
    if target == "cauchy":
        return torch.tan(math.pi * (u - 0.5))
    assert isinstance(target, Distribution)
    try:
        q = target.icdf(u.to(target.mean.dtype if target.mean.is_floating_point() else torch.float64))
    except NotImplementedError as err:
        raise TypeError(f"{type(target).__name__} has no icdf; pass a name or a tensor of quantiles") from err
    q = q.to(torch.float64)
    if not bool(torch.isfinite(q).all()):
        raise ValueError(f"{type(target).__name__}.icdf gave non-finite quantiles at interior levels")
    return q


def empirical_quantiles(x: ArrayLike, levels: ArrayLike) -> torch.Tensor:
    r"""Hazen quantiles along the last dimension (``numpy.quantile(method="hazen")``).

    The quantile at level :math:`p` sits at 0-based position :math:`pM - 1/2` of the sorted row,
    interpolated linearly between neighbouring order statistics and equal to the minimum (maximum) below
    position 0 (above :math:`M - 1`): the inverse of the interpolated ECDF through :math:`(x_{(k)}, p_k)`.

    Parameters
    ----------
    x
        Shape (..., M), M >= 1, finite.
    levels
        1-D, values in [0, 1].

    Returns
    -------
    torch.Tensor
        Shape (..., len(levels)), dtype of ``x``.

    Examples
    --------
    >>> empirical_quantiles(torch.tensor([3.0, 1.0, 2.0, 4.0]), torch.tensor([0.125, 0.5, 0.875]))
    tensor([1.0000, 2.5000, 4.0000])
    """
    t = as_tensor(x, name="x")
    p = as_tensor(levels, name="levels", ndim=1)
    if t.ndim == 0 or t.shape[-1] == 0:
        raise ValueError(f"x needs at least one value along its last dimension; got {tuple(t.shape)}")
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError("levels must lie in [0, 1]")
    return sorted_quantiles(torch.sort(t, dim=-1).values, p)


def sorted_quantiles(xs: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """:func:`empirical_quantiles` of rows that are already sorted ascending (no checks, no sort)."""
    m = xs.shape[-1]
    pos = (levels.to(torch.float64) * m - 0.5).clamp(0, m - 1).to(xs.device)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=m - 1)
    w = (pos - lo).to(xs.dtype)
    return xs[..., lo] * (1 - w) + xs[..., hi] * w


def interp_map(x: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    r"""Nondecreasing piecewise-linear map through the knots :math:`(x_k, y_k)`, batched.

    Between knots the map interpolates linearly; beyond the end knots it continues with the slope of the
    chord from the end knot to the nearest knot with a different :math:`x` (0 if all knots are equal). At
    a value shared by several knots the output is the mean of the left and right limits, the continuous
    analogue of mid-ranks. Differentiable in all three arguments (autograd).

    Parameters
    ----------
    x
        Shape (..., M).
    knots_x, knots_y
        Shape (..., K), K >= 2, same leading dimensions as ``x``; ``knots_x`` nondecreasing along the
        last dimension.

    Returns
    -------
    torch.Tensor
        Shape of ``x``.

    Examples
    --------
    >>> interp_map(torch.tensor([[-1.0, 0.5, 3.0]]), torch.tensor([[0.0, 1.0, 2.0]]),
    ...            torch.tensor([[0.0, 10.0, 11.0]]))
    tensor([[-10.,   5.,  12.]])
    """
    if knots_x.shape != knots_y.shape or knots_x.shape[:-1] != x.shape[:-1] or knots_x.shape[-1] < 2:
        raise ValueError(
            "interp_map needs knots_x and knots_y of shape (..., K>=2) matching x's leading dimensions; got "
            f"x {tuple(x.shape)}, knots_x {tuple(knots_x.shape)}, knots_y {tuple(knots_y.shape)}"
        )
    k = knots_x.shape[-1]
    kx, ky = knots_x.contiguous(), knots_y
    xc = x.contiguous()

    def end_slope(end: int, inner: torch.Tensor) -> torch.Tensor:
        j = inner.clamp(0, k - 1)
        dx = kx[..., end : end + 1] - kx.gather(-1, j)
        dy = ky[..., end : end + 1] - ky.gather(-1, j)
        ok = (dx != 0) & (inner >= 0) & (inner <= k - 1)
        return torch.where(ok, dy / torch.where(ok, dx, torch.ones_like(dx)), torch.zeros_like(dx))

    last_inner = torch.searchsorted(kx, kx[..., -1:].contiguous(), right=False) - 1
    first_inner = torch.searchsorted(kx, kx[..., :1].contiguous(), right=True)
    dx, dy = kx[..., 1:] - kx[..., :-1], ky[..., 1:] - ky[..., :-1]
    inner = torch.where(dx != 0, dy / torch.where(dx != 0, dx, torch.ones_like(dx)), torch.zeros_like(dx))
    # segment s (0..K) holds the values with s knots at or below them (right limit) or strictly below them
    # (left limit): s = 0 extends below knot 0, s = K above knot K-1, otherwise [knot s-1, knot s]
    slope = torch.cat([end_slope(0, first_inner), inner, end_slope(k - 1, last_inner)], -1)
    anchor_x, anchor_y = torch.cat([kx[..., :1], kx], -1), torch.cat([ky[..., :1], ky], -1)

    def on_segment(s: torch.Tensor) -> torch.Tensor:
        return anchor_y.gather(-1, s) + (xc - anchor_x.gather(-1, s)) * slope.gather(-1, s)

    right = torch.searchsorted(kx, xc, right=True)
    y = on_segment(right)
    # only a value equal to a knot has a different left limit: the segment below the first equal knot
    hit = (right > 0) & (xc == kx.gather(-1, (right - 1).clamp(min=0)))
    if bool(hit.any()):
        first_equal = torch.searchsorted(kx, kx, right=False)
        left = torch.where(hit, first_equal.gather(-1, (right - 1).clamp(min=0)), right)
        y = torch.where(hit, 0.5 * (on_segment(left) + y), y)
    return y
