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

import torch
from torch.nn import functional as tnf

from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional._quantile_curves import (
    TARGET_NAMES,
    Target,
    _check_target,
    empirical_quantiles,
    interp_map,
    knot_levels,
    target_quantiles,
)
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

#: Backward surrogates of the rank map (see the module docstring).
GRAD_NAMES = ("ecdf", "ste", "softrank")


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
    return _map_rows(t, target, grad, tie_noise, generator)[0]


def _map_rows(
    t: torch.Tensor, target: Target, grad: str, tie_noise: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`quantile_map` on checked arguments, and the rows of ``t`` sorted (float32 for half
    precision, shape (rows, M)) as a by-product of the ranking; None when tie noise was added."""
    m = t.shape[-1]
    work = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    rows = work.reshape(-1, m)
    if tie_noise > 0:
        assert generator is not None
        noise = torch.randn(rows.shape, generator=generator, device=generator.device, dtype=rows.dtype)
        rows = rows + tie_noise * noise.to(rows.device)
    if isinstance(target, str) and m <= CACHED_TABLE_MAX_M:
        table, slope_table = _named_tables(target, m, grad, rows.device, rows.dtype)
    else:
        table, slope_table = _rank_tables(target, m, grad, rows.device, rows.dtype)
    y, xs = RankMap.apply(rows.contiguous(), table, slope_table, grad)
    return y.reshape(t.shape).to(t.dtype), (None if tie_noise > 0 else xs)


def _rank_tables(
    target: Target, m: int, grad: str, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Target quantiles at the doubled mid-rank levels (j + 1)/(2m), j = 0..2m-2, and the surrogate's
    slope at the same levels (None for ``ecdf``)."""
    # named targets are elementwise functions: build them where they are used (no host work, no copy)
    where = device if isinstance(target, str) else None
    levels = (torch.arange(2 * m - 1, dtype=torch.float64, device=where) + 1) / (2 * m)
    table = target_quantiles(target, levels)
    slope_table = None
    if grad == "ste":
        # dQ/dz for z ~ N(0, 1): Q'(u) phi(Phi^-1(u)), identically 1 for the gaussian target
        phi = torch.exp(-0.5 * torch.special.ndtri(levels) ** 2) / math.sqrt(2 * math.pi)
        slope_table = (quantile_slope(target, levels, table) * phi).to(device=device, dtype=dtype)
    elif grad == "softrank":
        slope_table = quantile_slope(target, levels, table).to(device=device, dtype=dtype)
    return table.to(device=device, dtype=dtype), slope_table


#: Tables of the named targets, kept per (name, m, grad, device, dtype) for rows of up to
#: ``CACHED_TABLE_MAX_M`` values (at most 32 entries of 2 x 2m floats, 16 MiB each): building them costs a
#: few kernel launches per call, which matter next to a short sort.
CACHED_TABLE_MAX_M = 1 << 20


@functools.lru_cache(maxsize=32)
def _named_tables(
    target: str, m: int, grad: str, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # normal tensors even when first built under inference_mode: later training steps save them for backward
    with torch.inference_mode(False), torch.no_grad():
        return _rank_tables(target, m, grad, device, dtype)


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
    c = t.shape[1]
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
    return _group_map(t, num_groups, target, weight, bias, knots, blend, grad, tie_noise, generator)[0]


def _group_map(
    t: torch.Tensor,
    num_groups: int,
    target: Target,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    knots: torch.Tensor | None,
    blend: float,
    grad: str,
    tie_noise: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`group_map` on checked arguments (the layers check theirs once, at construction), and each
    (sample, group) row sorted when the rank map ran without tie noise (shape (N * num_groups, M); None
    otherwise), for running quantiles without a second sort."""
    n, c = t.shape[:2]
    work = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    grouped = work.reshape(n, num_groups, -1)
    sorted_rows = None
    if knots is None:
        mapped, sorted_rows = _map_rows(grouped, target, grad, tie_noise, generator)
    else:
        if knots.ndim != 2 or knots.shape[0] != num_groups or knots.shape[1] < 2:
            raise ValueError(f"knots must have shape ({num_groups}, K>=2); got {tuple(knots.shape)}")
        if not bool(torch.isfinite(knots).all()) or bool((knots[:, 1:] < knots[:, :-1]).any()):
            raise ValueError("knots must be finite and nondecreasing along their last dimension")
        if not bool(torch.isfinite(grouped).all()):
            raise ValueError("x contains non-finite values (NaN or inf); clean or impute them first")
        ky = target_quantiles(target, knot_levels(knots.shape[1])).to(grouped)
        rows = grouped.transpose(0, 1).reshape(num_groups, -1)  # (G, N*M): the knots are per group
        mapped = interp_map(rows, knots.to(grouped), ky.expand(num_groups, -1))
        mapped = mapped.reshape(num_groups, n, -1).transpose(0, 1)
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
    return y.to(t.dtype).contiguous(memory_format=_memory_format(t)), sorted_rows
