r"""Quantile mapping: send every group of values to a target distribution by rank.

For a row :math:`x_1, \dots, x_M` with mid-ranks :math:`r_i` (ties share the mean of the positions
they span) the map is

.. math:: y_i = Q\!\left(\frac{r_i - 1/2}{M}\right),

with :math:`Q` the target quantile function and Hazen plotting positions :math:`(k + 1/2)/M`, so that the
output's empirical distribution is within Kolmogorov distance :math:`1/(2M)` of the target and finite for
every target (no level 0 or 1 is ever used). Equal inputs give equal outputs, and the map is invariant to
strictly increasing transforms of the row.

The rank map is piecewise constant in :math:`x`, so its true derivative is zero almost everywhere. The
backward pass uses a documented surrogate (``grad``):

``"ecdf"``
    the slope of the monotone map :math:`Q \circ \hat F`: the chord of the sorted pairs
    :math:`(x_{(k)}, y_{(k)})` over :math:`\pm h` positions, :math:`h = \lceil \sqrt{M}/2 \rceil`
    (widened past tie blocks), a spacing estimate of :math:`Q'(F(x))\, f(x)`; diagonal.
``"ste"``
    straight-through via the matching GroupNorm: the exact derivative of
    :math:`x \mapsto Q(\Phi((x - \mu)/\sigma))` with the group's mean and standard deviation
    (:math:`\sigma^2 = \operatorname{var} + 10^{-5}` as in ``nn.GroupNorm``), which equals the rank map
    when the group is Gaussian; for the gaussian target it *is* GroupNorm's backward.
``"softrank"``
    the derivative of the logistic soft ECDF :math:`\tilde F(x_i) = \frac1M \sum_j \sigma((x_i - x_j)/\tau)`
    over the 8 sorted neighbours on each side, :math:`\tau = 4\,\mathrm{IQR}/M`, outer derivative
    :math:`Q'` taken at the rank level: :math:`\partial L/\partial x_k = \sum_j \kappa_{kj}(a_k - a_j)`
    with :math:`a = g\, Q'(u)/M`, :math:`\kappa = \sigma'(\cdot/\tau)/\tau`.

On the CPU, float32 rows are ranked with an exact two-pass 16-bit radix argsort (numpy's stable sort of
16-bit keys), about twice as fast as ``torch.sort``, in row chunks over ``torch.get_num_threads()``
threads; elsewhere ``torch.sort`` is used. On CUDA with Triton, the ``ste`` surrogate in float32 runs as
fused kernels (:mod:`shiftlab.functional._rank_map_triton`) with bitwise the same output; there a row
holding NaN or inf maps to NaN, as ``nn.GroupNorm`` does, where the other paths raise ``ValueError``
(refusing would cost a host synchronisation per call). Half precision is ranked in float32 and cast back.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch.distributions import Distribution
from torch.nn import functional as tnf

from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional._rank_map import NORM_EPS, RankMap, quantile_slope

__all__ = [
    "GRAD_NAMES",
    "TARGET_NAMES",
    "Target",
    "empirical_quantiles",
    "group_map",
    "interp_map",
    "knot_levels",
    "quantile_map",
    "target_quantiles",
]

#: Named targets: uniform on :math:`[-\sqrt3, \sqrt3]` (unit variance), standard normal, standard Cauchy.
TARGET_NAMES = ("uniform", "gaussian", "cauchy")
#: Backward surrogates of the rank map (see the module docstring).
GRAD_NAMES = ("ecdf", "ste", "softrank")
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
    m = t.shape[-1]
    xs = torch.sort(t, dim=-1).values
    pos = (p.to(torch.float64) * m - 0.5).clamp(0, m - 1).to(t.device)
    lo = pos.floor().long()
    hi = torch.clamp(lo + 1, max=m - 1)
    w = (pos - lo).to(t.dtype)
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
    kx = knots_x.contiguous()
    xc = x.contiguous()

    def end_slope(end: int, inner: torch.Tensor) -> torch.Tensor:
        j = inner.clamp(0, k - 1)
        dx = kx[..., end : end + 1] - kx.gather(-1, j)
        dy = knots_y[..., end : end + 1] - knots_y.gather(-1, j)
        ok = (dx != 0) & (inner >= 0) & (inner <= k - 1)
        return torch.where(ok, dy / torch.where(ok, dx, torch.ones_like(dx)), torch.zeros_like(dx))

    last_inner = torch.searchsorted(kx, kx[..., -1:].contiguous(), right=False) - 1
    first_inner = torch.searchsorted(kx, kx[..., :1].contiguous(), right=True)
    slope_left, slope_right = end_slope(0, first_inner), end_slope(k - 1, last_inner)

    def limit(right: bool) -> torch.Tensor:
        i = torch.searchsorted(kx, xc, right=right)
        # right limit: j is the last knot <= x; left limit: j is the first knot >= x
        j = (i - 1) if right else i
        inside = (i > 0) & (i < k)
        j0 = j.clamp(0, k - 1)
        j1 = (j0 + (1 if right else -1)).clamp(0, k - 1)
        x0, y0 = kx.gather(-1, j0), knots_y.gather(-1, j0)
        x1, y1 = kx.gather(-1, j1), knots_y.gather(-1, j1)
        dx = x1 - x0
        seg = torch.where(dx != 0, (y1 - y0) / torch.where(dx != 0, dx, torch.ones_like(dx)), 0 * dx)
        body = y0 + (xc - x0) * seg
        below = knots_y[..., :1] + (xc - kx[..., :1]) * slope_left
        above = knots_y[..., -1:] + (xc - kx[..., -1:]) * slope_right
        return torch.where(inside, body, torch.where(i == 0, below, above))

    return 0.5 * (limit(right=False) + limit(right=True))


def _check_choice(value: str, name: str, valid: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _check_noise(tie_noise: float, generator: torch.Generator | None) -> None:
    if not isinstance(tie_noise, int | float) or not math.isfinite(tie_noise) or tie_noise < 0:
        raise ValueError(f"tie_noise must be a finite number >= 0; got {tie_noise!r}")
    if tie_noise > 0 and generator is None:
        raise ValueError(
            "tie_noise > 0 needs an explicit torch.Generator (generator=...) for reproducibility"
        )


def quantile_map(
    x: ArrayLike,
    target: Target = "gaussian",
    *,
    grad: str = "ecdf",
    tie_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Map every row along the last dimension to ``target`` by mid-rank: :math:`y_i = Q((r_i - 1/2)/M)`.

    Parameters
    ----------
    x
        Shape (..., M), M >= 1, finite (NaN or inf raise ``ValueError``; on the fused CUDA path the row maps
        to NaN, see the module docstring), any float dtype (half precision is ranked in float32).
    target
        See :func:`target_quantiles`.
    grad
        Backward surrogate, one of :data:`GRAD_NAMES` (module docstring).
    tie_noise
        Standard deviation of Gaussian noise added to ``x`` before ranking (breaks ties at random);
        needs ``generator``. The noise is drawn on the generator's device.
    generator
        Source of the tie noise.

    Returns
    -------
    torch.Tensor
        Shape and dtype of ``x``. A tensor target that requires grad receives a gradient.

    Examples
    --------
    >>> quantile_map(torch.tensor([[10.0, -3.0, 7.0, 7.0]]), "uniform")
    tensor([[ 1.2990, -1.2990,  0.0000,  0.0000]])
    """
    t = as_tensor(x, name="x", finite=False)
    _check_target(target)
    _check_choice(grad, "grad", GRAD_NAMES)
    _check_noise(tie_noise, generator)
    if t.ndim == 0 or t.shape[-1] == 0:
        raise ValueError(f"x needs at least one value along its last dimension; got {tuple(t.shape)}")
    return _map_rows(t, target, grad, tie_noise, generator)


def _map_rows(
    t: torch.Tensor, target: Target, grad: str, tie_noise: float, generator: torch.Generator | None
) -> torch.Tensor:
    """:func:`quantile_map` on checked arguments."""
    m = t.shape[-1]
    work = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    rows = work.reshape(-1, m)
    if tie_noise > 0:
        assert generator is not None
        noise = torch.randn(rows.shape, generator=generator, device=generator.device, dtype=rows.dtype)
        rows = rows + tie_noise * noise.to(rows.device)
    if isinstance(target, str):
        table, slope_table = _named_tables(target, m, grad, rows.device, rows.dtype)
    else:
        table, slope_table = _rank_tables(target, m, grad, rows.device, rows.dtype)
    y = RankMap.apply(rows.contiguous(), table, slope_table, grad)
    return y.reshape(t.shape).to(t.dtype)


def _rank_tables(
    target: Target, m: int, grad: str, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target quantiles at the doubled mid-rank levels (j + 1)/(2m), j = 0..2m-2, and the surrogate's
    slope at the same levels (None for ``ecdf``)."""
    levels = (torch.arange(2 * m - 1, dtype=torch.float64) + 1) / (2 * m)
    table = target_quantiles(target, levels)
    slope_table = None
    if grad == "ste":
        # dQ/dz for z ~ N(0, 1): Q'(u) phi(Phi^-1(u)), identically 1 for the gaussian target
        phi = torch.exp(-0.5 * torch.special.ndtri(levels) ** 2) / math.sqrt(2 * math.pi)
        slope_table = (quantile_slope(target, levels, table) * phi).to(device=device, dtype=dtype)
    elif grad == "softrank":
        slope_table = quantile_slope(target, levels, table).to(device=device, dtype=dtype)
    return table.to(device=device, dtype=dtype), slope_table


#: Tables of the named targets, kept per (name, m, grad, device, dtype): building them costs host work
#: and, on a GPU, two host-to-device copies per call.
_named_tables = functools.lru_cache(maxsize=64)(_rank_tables)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    if t.ndim == 5 and t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def group_map(
    x: ArrayLike,
    num_groups: int,
    target: Target = "gaussian",
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    knots: torch.Tensor | None = None,
    blend: float = 1.0,
    grad: str = "ecdf",
    tie_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""GroupNorm's layout with a quantile map in place of standardisation.

    Channels are split into ``num_groups`` groups; each sample's group (its channels and all positions,
    :math:`M = (C/G)\prod \text{spatial}` values) is mapped by :func:`quantile_map`, or, when ``knots``
    are given, through the fixed map :func:`interp_map` from ``knots[g]`` to the target quantiles at
    :math:`(k + 1/2)/K` (deterministic, independent of the rest of the batch, true autograd derivative).
    Then, with :math:`n` the GroupNorm standardisation,

    .. math:: y = \gamma_c\,\bigl(\alpha\,\mathrm{map}(x) + (1 - \alpha)\,n(x)\bigr) + \beta_c .

    Parameters
    ----------
    x
        Shape (N, C, *), any float dtype, channels-last kept.
    num_groups
        Divides C.
    target
        See :func:`target_quantiles`.
    weight, bias
        Shape (C,) or None.
    knots
        Shape (num_groups, K), K >= 2, finite, nondecreasing along K: running quantiles of each group.
    blend
        :math:`\alpha \in [0, 1]`; 1 is the pure quantile map.
    grad, tie_noise, generator
        See :func:`quantile_map` (unused with ``knots``).

    Returns
    -------
    torch.Tensor
        Shape, dtype and memory format of ``x``.

    Examples
    --------
    >>> x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> y = group_map(x, 2)
    >>> tuple(y.shape), round(float(y[0, :2].std()), 2)
    ((2, 4, 8, 8), 1.0)
    """
    t = as_tensor(x, name="x", finite=False)
    if t.ndim < 2:
        raise ValueError(f"x must have shape (N, C, *); got {tuple(t.shape)}")
    n, c = t.shape[:2]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int; got {num_groups!r}")
    if c % num_groups:
        raise ValueError(f"num_channels {c} is not divisible by num_groups {num_groups}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"{name} must have shape ({c},); got {tuple(p.shape)}")
    if not isinstance(blend, int | float) or not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend must be a number in [0, 1]; got {blend!r}")
    _check_target(target)
    _check_choice(grad, "grad", GRAD_NAMES)
    _check_noise(tie_noise, generator)
    work = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    grouped = work.reshape(n, num_groups, -1)
    if knots is None:
        mapped = _map_rows(grouped, target, grad, tie_noise, generator)
    else:
        if knots.ndim != 2 or knots.shape[0] != num_groups or knots.shape[1] < 2:
            raise ValueError(f"knots must have shape ({num_groups}, K>=2); got {tuple(knots.shape)}")
        if not bool(torch.isfinite(knots).all()) or bool((knots[:, 1:] < knots[:, :-1]).any()):
            raise ValueError("knots must be finite and nondecreasing along their last dimension")
        if not bool(torch.isfinite(grouped).all()):
            raise ValueError("x contains non-finite values (NaN or inf); clean or impute them first")
        ky = target_quantiles(target, knot_levels(knots.shape[1])).to(grouped)
        kx = knots.to(grouped).unsqueeze(0).expand(n, -1, -1)
        mapped = interp_map(grouped, kx, ky.expand(n, num_groups, -1))
    if blend < 1.0:
        normed = tnf.group_norm(work, num_groups, eps=NORM_EPS).reshape(n, num_groups, -1)
        mapped = blend * mapped + (1.0 - blend) * normed
    y = mapped.reshape(t.shape)
    shape = (1, c) + (1,) * (t.ndim - 2)
    if weight is not None and bias is not None:
        y = torch.addcmul(bias.to(y.dtype).reshape(shape), y, weight.to(y.dtype).reshape(shape))
    elif weight is not None:
        y = y * weight.to(y.dtype).reshape(shape)
    elif bias is not None:
        y = y + bias.to(y.dtype).reshape(shape)
    return y.to(t.dtype).contiguous(memory_format=_memory_format(t))
