"""The layers on CUDA (the fused Triton path) against the same layers on the CPU; skipped without a GPU."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from shiftlab.functional import quantile
from shiftlab.nn import GroupMap, InstanceMap, LayerMap

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES: list[tuple[Callable[[], nn.Module], tuple[int, ...]]] = [
    (lambda: GroupMap(4, 8, track_running_stats=True), (6, 8, 9, 9)),  # rows of 162: in registers
    (lambda: InstanceMap(8, affine=True, track_running_stats=True), (6, 8, 40, 40)),  # 1,600: torch.sort
    (lambda: LayerMap([8, 20, 20], track_running_stats=True), (6, 8, 20, 20)),
]


@pytest.mark.parametrize(("make", "shape"), CASES)
def test_cuda_layer_equals_cpu_layer(make: Callable[[], nn.Module], shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    cpu, gpu = make(), make().cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(shape)
    x[0, :, :3] = 0.0  # tie blocks
    quantile._named_tables.cache_clear()
    with torch.inference_mode():  # the cached tables are first built here, then saved for backward below
        cpu(x)
        gpu(x.cuda())
    for _ in range(3):
        xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
        yc, yg = cpu(xc), gpu(xg)
        assert torch.equal(yc, yg.cpu())
        g = torch.randn_like(yc)
        yc.backward(g)
        yg.backward(g.cuda())
        assert xc.grad is not None and xg.grad is not None
        torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(gpu.running_knots.cpu(), cpu.running_knots)
    cpu.eval()
    gpu.eval()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-5, atol=1e-5)


def test_cuda_group_with_nan_maps_to_nan_and_spares_the_others() -> None:
    x = torch.randn(3, 8, 6, 6, device="cuda")
    x[1, 0, 0, 0] = float("nan")
    y = GroupMap(2, 8).cuda()(x)
    assert bool(y[1, :4].isnan().all()) and bool(y[1, 4:].isfinite().all())
    assert bool(y[0].isfinite().all()) and bool(y[2].isfinite().all())
