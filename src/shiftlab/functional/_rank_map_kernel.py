"""Triton kernels of the fused ``ste`` rank map (see :mod:`shiftlab.functional._rank_map_triton`).

Importing this module imports Triton; Triton's JIT needs the kernels at module level. Every kernel writes
the doubled mid-rank ``mid`` (int32) scattered to the input order, or -1 across a row that holds NaN or
inf; the table lookups are separate, coalesced passes (one scattered output instead of two is about three
times faster on an H100).
"""

# mypy: disable-error-code="no-untyped-def"

import triton
import triton.language as tl


@triton.jit
def _max(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min(a, b):
    return tl.minimum(a, b)


@triton.jit
def rank_kernel(x_ptr, mid_ptr, sorted_ptr, mean_ptr, rstd_ptr, m, eps, BLOCK: tl.constexpr):
    """One row per program, sorted in registers; also the row's mean and 1/sqrt(var + eps)."""
    row = tl.program_id(0)
    base = row.to(tl.int64) * m
    offs = tl.arange(0, BLOCK)
    valid = offs < m
    x = tl.load(x_ptr + base + offs, mask=valid, other=0.0)
    row_bad = tl.max(((x != x) | (tl.abs(x) == float("inf"))).to(tl.int32), axis=0) > 0
    mean = tl.sum(x, axis=0) / m
    d = tl.where(valid, x - mean, 0.0)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / m + eps))
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(valid, bits ^ ((bits >> 31) & 0x7FFFFFFF), 0x7FFFFFFF)
    word = tl.sort((key.to(tl.int64) << 32) | offs.to(tl.int64))
    skey = (word >> 32).to(tl.int32)
    src = (word & 0xFFFFFFFF).to(tl.int32)
    # neighbours of a sorted position through the sorted row in global memory (visible after the barrier)
    sv = (skey ^ ((skey >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
    tl.store(sorted_ptr + base + offs, sv, mask=valid)
    tl.debug_barrier()
    prev = tl.load(sorted_ptr + base + offs - 1, mask=valid & (offs >= 1), other=0.0)
    nxt = tl.load(sorted_ptr + base + offs + 1, mask=offs + 1 < m, other=0.0)
    opens = (offs == 0) | (prev != sv)
    closes = (offs + 1 >= m) | (nxt != sv)
    start = tl.associative_scan(tl.where(opens, offs, 0), 0, _max)
    end = tl.associative_scan(tl.where(closes, offs, BLOCK), 0, _min, reverse=True)
    mid = tl.where(row_bad, -1, start + end)
    tl.store(mid_ptr + base + src, mid, mask=src < m)


@triton.jit
def sorted_rank_kernel(xs_ptr, order_ptr, mid_ptr, m, TILE: tl.constexpr, STEPS: tl.constexpr):
    """A tile of a row sorted by torch.sort; tied lanes find their block's ends by binary search."""
    row = tl.program_id(0)
    tile = tl.program_id(1)
    base = row.to(tl.int64) * m
    k = tile * TILE + tl.arange(0, TILE)
    valid = k < m
    v = tl.load(xs_ptr + base + k, mask=valid, other=0.0)
    # torch.sort puts NaN and +inf last, -inf first: the row's two ends tell whether it holds any
    lo_end = tl.load(xs_ptr + base)
    hi_end = tl.load(xs_ptr + base + m - 1)
    row_bad = (hi_end != hi_end) | (tl.abs(hi_end) == float("inf")) | (tl.abs(lo_end) == float("inf"))
    prev = tl.load(xs_ptr + base + k - 1, mask=valid & (k >= 1), other=0.0)
    nxt = tl.load(xs_ptr + base + k + 1, mask=k + 1 < m, other=0.0)
    tied_left = valid & (k >= 1) & (prev == v)
    tied_right = (k + 1 < m) & (nxt == v)
    start = k
    end = k
    if tl.max((tied_left | tied_right).to(tl.int32), axis=0) > 0:
        lo = tl.zeros_like(k)
        hi = k
        for _ in tl.static_range(STEPS):  # first position whose value is not below v
            probe = (lo + hi) // 2
            active = tied_left & (lo < hi)
            below = tl.load(xs_ptr + base + probe, mask=active, other=0.0) < v
            lo = tl.where(active & below, probe + 1, lo)
            hi = tl.where(active & ~below, probe, hi)
        start = tl.where(tied_left, lo, k)
        lo = k
        hi = tl.zeros_like(k) + (m - 1)
        for _ in tl.static_range(STEPS):  # last position whose value is not above v
            probe = (lo + hi + 1) // 2
            active = tied_right & (lo < hi)
            above = tl.load(xs_ptr + base + probe, mask=active, other=0.0) > v
            hi = tl.where(active & above, probe - 1, hi)
            lo = tl.where(active & ~above, probe, lo)
        end = tl.where(tied_right, lo, k)
    mid = tl.where(row_bad, -1, start + end)
    src = tl.load(order_ptr + base + k, mask=valid, other=0)
    tl.store(mid_ptr + base + src, mid.to(tl.int32), mask=valid)


@triton.jit
def lookup_kernel(mid_ptr, table_ptr, g_ptr, out_ptr, n, TILE: tl.constexpr, HAS_G: tl.constexpr):
    """out = table[mid] (times g), NaN where mid is -1."""
    i = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)
    ok = i < n
    mid = tl.load(mid_ptr + i, mask=ok, other=0)
    out = tl.load(table_ptr + tl.maximum(mid, 0), mask=ok, other=0.0)
    if HAS_G:
        out = out * tl.load(g_ptr + i, mask=ok, other=0.0)
    tl.store(out_ptr + i, tl.where(mid < 0, float("nan"), out), mask=ok)
