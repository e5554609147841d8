"""Where the fused CUDA quantile map spends its time: the pieces, timed alone on one GPU.

Run: ``PYTHONPATH=src python3 benchmarks/groupmap_kernels.py`` (needs CUDA and Triton).

For (rows, m) = (1024, 2048) (GroupMap(32) at (32, 64, 32, 32)), (2048, 3136) (InstanceMap at
(8, 256, 56, 56)) and (256, 25088) (GroupMap(32) at (8, 256, 56, 56)), CUDA-event times per call of:
``torch.sort`` (values and indices), the in-register rank kernel where m fits, the whole ``fused_rank``,
one table lookup, one int32 scatter against two float32 scatters (``scatter_``, the layout the kernels
avoid); then GroupMap and InstanceMap forward+backward wall time without and with a host read of a NaN
flag after the forward, the synchronisation that raising on NaN/inf would add to every call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from shiftlab.functional import _rank_map_triton as fused
from shiftlab.nn import GroupMap, InstanceMap

SIZES = ((1024, 2048), (2048, 3136), (256, 25088))


def _us(fn: Callable[[], object], repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return 1e3 * start.elapsed_time(end) / repeats


def _check_cost(layer: torch.nn.Module, shape: tuple[int, ...], repeats: int = 30) -> tuple[float, float]:
    """Median wall ms of forward+backward, without and with a host read of a NaN flag after the forward
    (what refusing NaN/inf with an error would add to every call)."""
    x = torch.randn(shape, device="cuda")
    g = torch.randn_like(x)
    out = []
    for check in (False, True):
        times = []
        for _ in range(repeats + 3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            y = layer(x.detach().requires_grad_())
            if check:
                bool(torch.isnan(y).any())
            y.backward(g)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out.append(1e3 * statistics.median(times[3:]))
    return out[0], out[1]


def _report(r: int, m: int) -> None:
    x = torch.randn(r, m, device="cuda")
    xs, order = torch.sort(x, dim=-1)
    table = torch.randn(2 * m - 1, device="cuda")
    mid = fused.fused_rank(x, eps=1e-5)[0]
    y, rho = torch.empty_like(x), torch.empty_like(x)
    mid_sorted = (2 * torch.arange(m, device="cuda", dtype=torch.int32)).expand(r, m).contiguous()
    mid_out = torch.empty_like(mid_sorted)
    rows = f"({r}, {m})"
    print(f"{rows:<14} torch.sort {_us(lambda: torch.sort(x, dim=-1)):8.1f}")
    limit = fused.MAX_IN_REGISTERS
    if m <= 4096:
        fused.MAX_IN_REGISTERS = 4096
        print(f"{rows:<14} fused_rank in registers {_us(lambda: fused.fused_rank(x, eps=1e-5)):8.1f}")
    fused.MAX_IN_REGISTERS = 0
    print(f"{rows:<14} fused_rank via torch.sort {_us(lambda: fused.fused_rank(x, eps=1e-5)):8.1f}")
    fused.MAX_IN_REGISTERS = limit
    print(f"{rows:<14} fused_lookup {_us(lambda: fused.fused_lookup(mid, table)):8.1f}")
    one = _us(lambda: mid_out.scatter_(-1, order, mid_sorted))
    two = _us(lambda: (y.scatter_(-1, order, xs), rho.scatter_(-1, order, xs)))
    print(f"{rows:<14} scatter: one int32 {one:8.1f}, two float32 {two:8.1f}")


def main() -> None:
    if not torch.cuda.is_available() or fused._triton() is None:
        raise SystemExit("needs a CUDA device and Triton")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; kernel microseconds per call")
    for r, m in SIZES:
        _report(r, m)
    for name, layer, shape in (
        ("GroupMap(32, 64)", GroupMap(32, 64), (32, 64, 32, 32)),
        ("InstanceMap(256)", InstanceMap(256), (8, 256, 56, 56)),
    ):
        plain, checked = _check_cost(layer.cuda(), shape)
        print(
            f"{name} forward+backward wall: {plain:.3f} ms, with a host read of a NaN flag {checked:.3f} ms"
        )


if __name__ == "__main__":
    main()
