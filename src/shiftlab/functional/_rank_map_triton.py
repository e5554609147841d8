r"""The ``ste`` rank map as fused Triton kernels (CUDA, float32), with the torch path's output bit for bit.

Short rows (m <= :data:`MAX_IN_REGISTERS`): one program ranks one row in registers:

1. order-preserving integer keys of the float32 bits (:math:`b \oplus ((b \gg 31) \wedge \text{0x7FFFFFFF})`),
   packed with the position into one 64-bit word and sorted (bitonic ``tl.sort``; the row is padded with
   the largest key);
2. the tie blocks of the sorted row, found by float equality of neighbours (so :math:`-0`, whose key sits
   just below :math:`+0`'s, ties with it): block starts by a running maximum, block ends by a reverse running
   minimum, so the doubled mid-rank of every sorted position is :math:`s + e` exactly as in the torch path;
3. :math:`s + e` scattered back to the input order as int32, -1 across a row holding NaN or inf (which
   then maps to NaN, as ``nn.GroupNorm``'s output does, with no host synchronisation to raise);
4. the row mean and :math:`1/\sqrt{\mathrm{var} + \epsilon}` for the straight-through backward.

Long rows: ``torch.sort`` and ``torch.var_mean``, then one tiled kernel does steps 2-3 on the sorted row,
finding the two ends of a tie block by binary search (only lanes that are tied search).

The map is then one coalesced lookup ``table[mid]`` and the ``ste`` backward's weight ``g * slope[mid]``
another: scattering one int32 array and looking up twice is about three times faster on an H100 than
scattering both float outputs.

``tests/functional/test_rank_map_triton.py`` checks both kernels against the torch path under
``TRITON_INTERPRET=1`` on the CPU; ``benchmarks/groupmap.py`` times them on a GPU.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

#: Rows up to this length are sorted in the registers of one program; longer rows are sorted by
#: ``torch.sort`` (a segmented radix sort) and mapped by the sorted-row kernel, which finds tie blocks by
#: binary search. Chosen on an H100 (``benchmarks/groupmap.py --max-in-registers``): GPU time of a GroupMap
#: forward+backward at m = 1024, 61 us in registers against 80 us sorted; at m = 2048, 314 against 246.
MAX_IN_REGISTERS = 1024
#: Positions per program of the sorted-row kernel and of the table lookup.
TILE = 1024
LOOKUP_TILE = 1024
#: Off: every row takes the torch path (``benchmarks/groupmap.py`` compares both in one run).
ENABLED = True


@functools.cache
def _triton() -> Any:
    """The Triton module and the kernels (compiled on first use), or None without Triton."""
    try:
        import triton

        from shiftlab.functional import _rank_map_kernel
    except ImportError:
        return None
    return triton, _rank_map_kernel


def fused_available(rows: torch.Tensor) -> bool:
    """Whether :func:`fused_rank` takes these (r, m) rows: CUDA, float32, m >= 2, Triton present."""
    return (
        ENABLED and rows.is_cuda and rows.dtype == torch.float32 and rows.shape[-1] >= 2
        and _triton() is not None
    )  # fmt: skip


def fused_rank(
    rows: torch.Tensor, *, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Doubled mid-ranks of contiguous float32 rows (r, m): one kernel, or ``torch.sort`` and one kernel.

    Returns
    -------
    mid
        int32 (r, m): :math:`s + e` (first plus last sorted position of the element's tie block) in input
        order, so that ``table[mid]`` is the rank map; -1 across a row that holds NaN or inf.
    sorted_rows
        Each row sorted ascending (float32).
    mean, rstd
        Row mean and :math:`1/\sqrt{\mathrm{var} + \epsilon}`, shape (r, 1) as ``native_layer_norm`` gives.
    """
    found = _triton()
    assert found is not None, "fused_rank needs triton; check fused_available first"
    triton, kernels = found
    r, m = rows.shape
    mid = torch.empty((r, m), dtype=torch.int32, device=rows.device)
    if m <= MAX_IN_REGISTERS:
        sorted_rows = torch.empty_like(rows)
        mean = torch.empty((r, 1), dtype=torch.float32, device=rows.device)
        rstd = torch.empty_like(mean)
        block = max(16, triton.next_power_of_2(m))
        kernels.rank_kernel[(r,)](
            rows, mid, sorted_rows, mean, rstd, m, eps, BLOCK=block, num_warps=max(4, min(16, block // 256))
        )
    else:
        sorted_rows, order = torch.sort(rows, dim=-1)
        var, mean = torch.var_mean(rows, dim=-1, correction=0, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        kernels.sorted_rank_kernel[(r, triton.cdiv(m, TILE))](
            sorted_rows, order, mid, m, TILE=TILE, STEPS=math.ceil(math.log2(m)) + 1, num_warps=4
        )
    return mid, sorted_rows, mean, rstd


def fused_lookup(mid: torch.Tensor, table: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
    """``table[mid]`` (times ``g`` when given) in the float dtype of ``table``; NaN where ``mid`` is -1."""
    found = _triton()
    assert found is not None, "fused_lookup needs triton; check fused_available first"
    triton, kernels = found
    out = torch.empty(mid.shape, dtype=table.dtype, device=mid.device)
    n = mid.numel()
    kernels.lookup_kernel[(triton.cdiv(n, LOOKUP_TILE),)](
        mid, table, out if g is None else g, out, n, TILE=LOOKUP_TILE, HAS_G=g is not None, num_warps=4
    )
    return out
