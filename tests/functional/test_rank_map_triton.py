"""The fused Triton rank map against the torch path, run by Triton's interpreter on the CPU.

``TRITON_INTERPRET=1`` must be set before the kernel is compiled, so the comparison runs in a child
process; the CUDA run of the same kernel is timed by ``benchmarks/groupmap.py`` and compared with the torch
path by ``test_fused_matches_torch_on_cuda`` where a GPU is present.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

CHILD = textwrap.dedent(
    """
    import torch
    from shiftlab.functional import _rank_map, _rank_map_triton
    from shiftlab.functional._rank_map import NORM_EPS, RankMap
    from shiftlab.functional._rank_map_triton import fused_lookup, fused_rank
    from shiftlab.functional.quantile import target_quantiles

    gen = torch.Generator().manual_seed(0)
    # rows up to 64 in registers, longer ones through torch.sort and the sorted-row kernel in tiles of 32
    _rank_map_triton.MAX_IN_REGISTERS, _rank_map_triton.TILE = 64, 32
    for m in (2, 3, 17, 64, 65, 300):
        rows = torch.randn(5, m, generator=gen)
        rows[0, : m // 2] = 0.0                      # a long tie block at the front of the sort
        rows[1, 0], rows[1, -1] = 0.0, -0.0          # -0 ties with +0
        rows[2] = torch.round(rows[2] * 2) / 2       # many small tie blocks
        rows[3, :] = 1.5                             # one block: the whole row
        rows[4] = rows[4] * 1e15 + 3e16               # large finite values
        levels = (torch.arange(2 * m - 1, dtype=torch.float64) + 1) / (2 * m)
        table = target_quantiles("gaussian", levels).float()
        slope = torch.rand(2 * m - 1, generator=gen)
        mid, srt, mean, rstd = fused_rank(rows, eps=NORM_EPS)
        y, rho = fused_lookup(mid, table), fused_lookup(mid, slope)
        z = rows + 0.0
        pairs = (z.unsqueeze(-1), z.unsqueeze(-2))
        ref_mid = 2 * (pairs[0] > pairs[1]).sum(-1) + (pairs[0] == pairs[1]).sum(-1) - 1
        assert mid.dtype == torch.int32 and torch.equal(mid.long(), ref_mid), m
        assert torch.equal(y, table[ref_mid]), m
        assert torch.equal(rho, slope[ref_mid]), m
        assert torch.equal(srt, torch.sort(z, dim=-1).values), m
        _, ref_mean, ref_rstd = torch.ops.aten.native_layer_norm(rows, [m], None, None, NORM_EPS)
        torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rstd, ref_rstd, rtol=1e-4, atol=0)
        # the same forward output and backward as the torch path's autograd function
        table_grad = table.clone().requires_grad_()
        x = rows.clone().requires_grad_()
        out, srt_torch = RankMap.apply(x, table_grad, slope, "ste")
        assert torch.equal(out, y), m
        g = torch.randn(5, m, generator=gen)
        out.backward(g)
        gx = torch.ops.aten.native_layer_norm_backward(
            g * rho, rows, [m], mean, rstd, None, None, [True, False, False]
        )[0]
        torch.testing.assert_close(gx, x.grad, rtol=1e-3, atol=1e-4)
        assert torch.equal(fused_lookup(mid, slope, g), g * rho), m
        want = torch.bincount(mid.long().reshape(-1), weights=g.reshape(-1), minlength=2 * m - 1)
        assert torch.equal(want, table_grad.grad), m
        # RankMap's fused branch (forward and backward) on the same rows, against the torch path above
        _rank_map.fused_available = lambda rows: True
        table_fused = table.clone().requires_grad_()
        xf = rows.clone().requires_grad_()
        out_fused, srt_fused = RankMap.apply(xf, table_fused, slope, "ste")
        out_fused.backward(g)
        _rank_map.fused_available = _rank_map_triton.fused_available
        assert torch.equal(out_fused, out) and torch.equal(srt_fused, srt_torch), m
        torch.testing.assert_close(xf.grad, x.grad, rtol=1e-3, atol=1e-4)
        assert torch.equal(table_fused.grad, table_grad.grad), m
    for m in (8, 100):  # in registers, then sorted by torch.sort
        bad = torch.randn(4, m, generator=gen)
        bad[1, 3], bad[2, 0], bad[3, m - 1] = float("nan"), float("inf"), -float("inf")
        table, slope = torch.randn(2 * m - 1, generator=gen), torch.rand(2 * m - 1, generator=gen)
        mid, *_ = fused_rank(bad, eps=NORM_EPS)
        assert (mid[1:] == -1).all() and (mid[0] >= 0).all(), m
        y = fused_lookup(mid, table)
        assert torch.isnan(y[1:]).all()
        assert torch.isnan(fused_lookup(mid, slope, torch.ones_like(bad))[1:]).all()
        assert torch.equal(y[0], RankMap.apply(bad[:1], table, slope, "ste")[0][0]), m
    print("fused ok")
    """
)


def test_fused_kernel_matches_torch_path_in_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "fused ok" in done.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_matches_torch_on_cuda() -> None:
    from shiftlab.functional._rank_map import NORM_EPS
    from shiftlab.functional._rank_map_triton import fused_available, fused_lookup, fused_rank
    from shiftlab.functional.quantile import quantile_map

    gen = torch.Generator().manual_seed(1)
    for m in (7, 1024, 2048, 25088):
        rows = torch.randn(33, m, generator=gen)
        rows[0, : m // 3] = 0.0
        rows[1] = torch.round(rows[1] * 4) / 4
        cuda = rows.cuda()
        assert fused_available(cuda)
        mid, srt, _, _ = fused_rank(cuda, eps=NORM_EPS)
        z = rows + 0.0
        values = torch.sort(z, dim=-1).values
        assert torch.equal(srt.cpu(), values)
        # doubled mid-rank: the count below plus the count up to and including, minus one
        below = torch.searchsorted(values, z, right=False)
        upto = torch.searchsorted(values, z, right=True)
        assert torch.equal(mid.cpu().long(), below + upto - 1)
        table = torch.randn(2 * m - 1, generator=gen)
        assert torch.equal(fused_lookup(mid, table.cuda()).cpu(), table[below + upto - 1])
        x = rows.clone().requires_grad_()
        xc = cuda.clone().requires_grad_()
        g = torch.randn(33, m, generator=gen)
        y, yc = quantile_map(x, grad="ste"), quantile_map(xc, grad="ste")
        assert torch.equal(yc.cpu(), y)
        y.backward(g)
        yc.backward(g.cuda())
        assert xc.grad is not None and x.grad is not None
        torch.testing.assert_close(xc.grad.cpu(), x.grad, rtol=1e-3, atol=1e-4)
