r"""The rank map of :mod:`shiftlab.functional.quantile` as an autograd function: exact row-wise ranks with
mid-ranks for ties, the lookup of each rank's target quantile, and the three backward surrogates
(``ecdf``, ``ste``, ``softrank``) whose math the quantile module's docstring gives.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.distributions import Distribution

from shiftlab.functional._rank_map_triton import fused_available, fused_lookup, fused_rank

#: Neighbours on each side in the soft-rank surrogate's backward.
SOFTRANK_NEIGHBOURS = 8
#: nn.GroupNorm's default variance floor, used by the ``ste`` surrogate and by the blend.
NORM_EPS = 1e-5


def _radix_argsort(rows: torch.Tensor) -> torch.Tensor:
    """Exact stable argsort of float32 CPU rows: LSD radix on the two 16-bit halves of an ordered key."""
    a = (rows.detach() + 0.0).numpy()  # -0.0 + 0.0 == +0.0, so the two zeros tie as they compare equal
    b = a.view(np.int32)
    key = b ^ ((b >> 31) & np.int32(0x7FFFFFFF))  # signed int32 order == float order
    p1 = torch.from_numpy(np.argsort(key.astype(np.uint16), axis=-1, kind="stable"))
    hi = torch.from_numpy((key >> 16).astype(np.int16)).gather(-1, p1)
    p2 = torch.from_numpy(np.argsort(hi.numpy(), axis=-1, kind="stable"))
    return p1.gather(-1, p2)


#: Rows x length below which the CPU radix argsort runs on the calling thread only.
PARALLEL_MIN_SIZE = 1 << 15


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="shiftlab-rank")


def _argsort(rows: torch.Tensor) -> torch.Tensor:
    """Exact stable argsort along the last dimension; on the CPU the radix argsort, in row chunks over
    ``torch.get_num_threads()`` threads (numpy's sort and torch's gather release the GIL)."""
    if rows.device.type != "cpu" or rows.dtype != torch.float32:
        return torch.sort(rows, dim=-1, stable=True).indices
    workers = min(torch.get_num_threads(), rows.shape[0])
    if workers < 2 or rows.numel() < PARALLEL_MIN_SIZE:
        return _radix_argsort(rows)
    return torch.cat(list(_pool(workers).map(_radix_argsort, rows.chunk(workers))))


class _Ties(NamedTuple):
    """The sorted positions that sit in tie blocks (flat in (r, m)) with their block's first and last
    in-row position; every other element is its own block."""

    flat: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor

    def dense(self, r: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Block start and end for every sorted position, (r, m) each."""
        start = torch.arange(m, device=self.flat.device).repeat(r)
        end = start.clone()
        start[self.flat], end[self.flat] = self.start, self.end
        return start.reshape(r, m), end.reshape(r, m)


def _tie_blocks(xs: torch.Tensor) -> _Ties | None:
    """The tie blocks of sorted rows, or None when there are none.

    Ties are rare in float data, so only the tied positions are visited: each run of consecutive positions
    equal to their left neighbour, [a, b], closes the block [a - 1, b].
    """
    m = xs.shape[1]
    tied = torch.nonzero((xs[:, 1:] == xs[:, :-1]).reshape(-1)).squeeze(1)
    if tied.numel() == 0:
        return None
    flat = tied + tied // (m - 1) + 1  # the tied element's flat position in (r, m); runs never cross rows
    opens = torch.ones_like(flat, dtype=torch.bool)
    opens[1:] = flat[1:] != flat[:-1] + 1
    run = torch.cumsum(opens, 0) - 1
    closes = torch.ones_like(opens)
    closes[:-1] = opens[1:]
    first, last = flat[opens] - 1, flat[closes]
    members = torch.cat([first, flat])
    start = torch.cat([first, first[run]]) % m
    end = torch.cat([last, last[run]]) % m
    return _Ties(members, start, end)


def _at_midranks(table: torch.Tensor, ties: _Ties | None, r: int, m: int) -> torch.Tensor:
    """``table[start + end]`` per sorted position: ``table[2k]`` off ties, patched at the tied positions."""
    out = table[0::2].expand(r, m).clone()
    if ties is not None:
        out.view(-1)[ties.flat] = table[ties.start + ties.end]
    return out


def quantile_slope(
    target: str | Distribution | torch.Tensor, levels: torch.Tensor, table: torch.Tensor
) -> torch.Tensor:
    """dQ/du at ``levels`` (float64): analytic for names, 1/density for distributions with log_prob,
    central differences of ``table`` otherwise (exact on the segments of a tensor target)."""
    if isinstance(target, str):
        if target == "uniform":
            return torch.full_like(levels, 2 * math.sqrt(3.0))
        if target == "gaussian":
            return math.sqrt(2 * math.pi) * torch.exp(0.5 * torch.special.ndtri(levels) ** 2)
        return math.pi * (1 + torch.tan(math.pi * (levels - 0.5)) ** 2)
    if isinstance(target, Distribution):
        try:
            q = target.icdf(levels.to(target.mean.dtype))
            return torch.exp(-target.log_prob(q)).to(torch.float64)
        except NotImplementedError:
            # no closed-form icdf/log_prob: fall through to the slope of the quantile table below
            pass
    t = table.detach().to(torch.float64)
    if t.shape[0] < 2:
        return torch.zeros_like(t)
    d = torch.empty_like(t)
    d[1:-1] = (t[2:] - t[:-2]) / (levels[2:] - levels[:-2])
    d[0] = (t[1] - t[0]) / (levels[1] - levels[0])
    d[-1] = (t[-1] - t[-2]) / (levels[-1] - levels[-2])
    return d


class RankMap(torch.autograd.Function):
    """y = table[2 * midrank - 2] row-wise, with the surrogate backward named by ``grad``; also returns the
    sorted rows (not differentiable), which the ranking produced anyway."""

    @staticmethod
    def forward(
        ctx: Any, rows: torch.Tensor, table: torch.Tensor, slope_table: torch.Tensor | None, grad: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r, m = rows.shape
        ctx.grad = grad
        ctx.table_size = table.shape[0]
        ctx.fused = grad == "ste" and fused_available(rows)
        if ctx.fused:
            mid, xs, mean, rstd = fused_rank(rows, eps=NORM_EPS)
            ctx.save_for_backward(rows, slope_table, mean, rstd, mid)
            ctx.mark_non_differentiable(xs)
            return fused_lookup(mid, table), xs
        order = _argsort(rows)
        xs = rows.gather(-1, order)
        if not bool(torch.isfinite(xs[:, 0]).all() & torch.isfinite(xs[:, -1]).all()):
            raise ValueError("x contains non-finite values (NaN or inf); clean or impute them first")
        k = torch.arange(m, device=rows.device)
        ties = _tie_blocks(xs)
        blocks = None if ties is None else ties.dense(r, m)
        ys = _at_midranks(table, ties, r, m)
        y = torch.empty_like(ys).scatter_(-1, order, ys)
        idx_orig = None
        if ctx.needs_input_grad[1]:
            idx = 2 * k.expand(r, m) if blocks is None else blocks[0] + blocks[1]
            idx_orig = torch.empty_like(idx).scatter_(-1, order, idx)
        if grad == "ecdf":
            h = max(1, math.ceil(math.sqrt(m) / 2))
            lo, hi = (k - h).clamp(0, m - 1), (k + h).clamp(0, m - 1)
            if blocks is None:
                dx = xs.index_select(-1, hi) - xs.index_select(-1, lo)
                dy = ys.index_select(-1, hi) - ys.index_select(-1, lo)
            else:
                lo2 = torch.minimum(lo, blocks[0] - 1).clamp(0, m - 1)
                hi2 = torch.maximum(hi, blocks[1] + 1).clamp(0, m - 1)
                dx = xs.gather(-1, hi2) - xs.gather(-1, lo2)
                dy = ys.gather(-1, hi2) - ys.gather(-1, lo2)
            pos = dx > 0
            slope = torch.where(pos, dy / torch.where(pos, dx, torch.ones_like(dx)), torch.zeros_like(dx))
            ctx.save_for_backward(torch.empty_like(slope).scatter_(-1, order, slope), idx_orig)
        elif grad == "ste":
            assert slope_table is not None
            _, mean, rstd = torch.ops.aten.native_layer_norm(rows, [m], None, None, NORM_EPS)
            rho = torch.empty_like(ys).scatter_(-1, order, _at_midranks(slope_table, ties, r, m))
            ctx.save_for_backward(rows, rho, mean, rstd, idx_orig)
        else:
            q1 = xs[:, (m - 1) // 4 : (m - 1) // 4 + 1]
            q3 = xs[:, 3 * (m - 1) // 4 : 3 * (m - 1) // 4 + 1]
            spread = torch.where(q3 > q1, q3 - q1, xs[:, -1:] - xs[:, :1])
            tau = 0.5 * SOFTRANK_NEIGHBOURS * spread / m
            assert slope_table is not None
            ctx.save_for_backward(xs, order, _at_midranks(slope_table, ties, r, m), tau, idx_orig)
        ctx.mark_non_differentiable(xs)
        return y, xs

    @staticmethod
    def backward(
        ctx: Any, g: torch.Tensor, _g_sorted: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        g = g.contiguous()
        if ctx.grad == "ecdf":
            slope, idx_orig = ctx.saved_tensors
            gx = g * slope
        elif ctx.grad == "ste":
            # the row-wise standardisation's backward, (w - mean w - z mean(w z)) / sigma with w = g rho,
            # through torch's fused layer-norm backward kernel
            rows, rho, mean, rstd, idx_orig = ctx.saved_tensors
            # fused: rho is the slope table and idx_orig the doubled mid-ranks, w = g * slope[mid]
            w = fused_lookup(idx_orig, rho, g) if ctx.fused else g * rho
            gx = torch.ops.aten.native_layer_norm_backward(
                w, rows, [rows.shape[-1]], mean, rstd, None, None, [True, False, False]
            )[0]
        else:
            xs, order, dq, tau, idx_orig = ctx.saved_tensors
            m = xs.shape[-1]
            a = g.gather(-1, order) * dq / m
            gs = torch.zeros_like(a)
            live = tau > 0
            safe_tau = torch.where(live, tau, torch.ones_like(tau))
            for d in range(1, min(SOFTRANK_NEIGHBOURS, m - 1) + 1):
                s = torch.sigmoid((xs[:, d:] - xs[:, :-d]) / safe_tau)
                c = s * (1 - s) / safe_tau * (a[:, :-d] - a[:, d:])
                gs[:, :-d] += c
                gs[:, d:] -= c
            gs = torch.where(live, gs, torch.zeros_like(gs))
            gx = torch.empty_like(gs).scatter_(-1, order, gs)
        g_table = None
        if ctx.needs_input_grad[1]:
            idx, weights = idx_orig.reshape(-1), g.reshape(-1)
            if ctx.fused:  # -1 marks rows that held NaN or inf: their NaN goes to the table's gradient
                bad = idx < 0
                idx, weights = torch.where(bad, 0, idx).long(), torch.where(bad, torch.nan, weights)
            g_table = torch.bincount(idx, weights=weights, minlength=ctx.table_size)
        return gx, g_table, None, None
