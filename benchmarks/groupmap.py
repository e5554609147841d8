"""Quantile-mapping layers against the matching torch norms: time and memory, as ratios, in one run.

Run: ``.venv/bin/python benchmarks/groupmap.py`` (both shapes, CPU, and CUDA when available), or
``--shapes small`` for (32, 64, 32, 32) only, ``--repeats N``, ``--grad ste ecdf softrank``.
On CUDA with Triton the ``ste`` layers run twice: through the fused kernel
(:mod:`shiftlab.functional._rank_map_triton`) and through the torch path, so both are compared in one run.

For every shape and device, each pair (GroupMap / GroupNorm(32), InstanceMap / InstanceNorm2d,
LayerMap / LayerNorm over (C, H, W)) is timed forward and forward+backward (median of ``--repeats``,
candidate and anchor interleaved so that load on a shared machine hits both), and the memory that
autograd saves for backward is summed over the saved tensors (bytes, device-independent). The goal of
the issue: forward+backward at most 3x the torch norm on CPU and 2x on GPU. The ``floor`` column is the
time of the torch path's ranking step alone (its exact argsort: a 16-bit radix on the CPU, ``torch.sort``
on a GPU) over the same rows divided by the norm's forward+backward: what the torch path pays before it
maps anything. On CUDA, ``kernel`` is the ratio of summed kernel time (torch.profiler) for forward+backward:
at these sizes the norms are bound by launch latency (about 50 us of kernels in 200-400 us of wall time), so
the wall-clock ratio flatters any layer that launches a few more, longer kernels; the kernel ratio is what a
launch-free (CUDA-graph or much larger) workload would see.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from shiftlab.functional import _rank_map_triton
from shiftlab.functional._rank_map import _argsort
from shiftlab.nn import GroupMap, InstanceMap, LayerMap

SHAPES = {"small": (32, 64, 32, 32), "large": (8, 256, 56, 56)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return total


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _pair(candidate: nn.Module, anchor: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    grad_out = torch.randn_like(x)
    device = x.device

    def fwd(m: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return m(x)

        return run

    def fwd_bwd(m: nn.Module) -> Callable[[], object]:
        def run() -> object:
            xr = x.detach().requires_grad_()
            m(xr).backward(grad_out)
            return xr.grad

        return run

    out: dict[str, float] = {}
    for name, make in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        make(candidate)()  # warm-up
        make(anchor)()
        cand, anch = [], []
        for _ in range(repeats):
            cand.append(_timed(make(candidate), device))
            anch.append(_timed(make(anchor), device))
        out[f"{name}_ms"] = 1e3 * statistics.median(cand)
        out[f"{name}_anchor_ms"] = 1e3 * statistics.median(anch)
    xr = x.detach().requires_grad_()
    out["saved_mb"] = _saved_bytes(candidate, xr) / 2**20
    out["saved_anchor_mb"] = _saved_bytes(anchor, xr) / 2**20
    return out


def _kernel_us(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, repeats: int = 5) -> float:
    """Summed CUDA kernel time of one forward+backward (the profiler's device time), microseconds."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            layer(x.detach().requires_grad_()).backward(grad_out)
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / repeats


def _sort_floor(x: torch.Tensor, rows: int, repeats: int) -> float:
    flat = x.reshape(rows, -1).contiguous()
    _argsort(flat)
    times = [_timed(lambda: _argsort(flat), x.device) for _ in range(repeats)]
    return 1e3 * statistics.median(times)


def _paths(device: torch.device, grad: str) -> list[str]:
    fused = device.type == "cuda" and grad == "ste" and _rank_map_triton._triton() is not None
    return ["fused", "torch"] if fused else ["torch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--grad", nargs="+", default=["ste"], choices=["ste", "ecdf", "softrank"])
    parser.add_argument("--layers", nargs="+", default=["group", "instance", "layer"])
    parser.add_argument(
        "--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda if present"
    )
    parser.add_argument(
        "--track-running-stats", action="store_true", help="maps with running knots (training-mode update)"
    )
    parser.add_argument(
        "--eval",
        action="store_true",
        help="maps in eval mode through running knots (one training pass first)",
    )
    parser.add_argument("--max-in-registers", type=int, help="override MAX_IN_REGISTERS (tuning)")
    args = parser.parse_args()
    if args.max_in_registers is not None:
        _rank_map_triton.MAX_IN_REGISTERS = args.max_in_registers
    devices = [torch.device(d) for d in args.devices or ["cpu"] + ["cuda"] * torch.cuda.is_available()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; medians of {args.repeats}")
    header = (
        f"{'device':<6} {'shape':<18} {'layer':<28} {'fwd ms':>8} {'anchor':>8} {'ratio':>6} "
        f"{'f+b ms':>8} {'anchor':>8} {'ratio':>6} {'floor':>6} {'kernel':>6} {'saved MB':>9} {'anchor':>7}"
    )
    print(header)
    for device in devices:
        for shape_name in args.shapes:
            shape = SHAPES[shape_name]
            n, c, h, w = shape
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
            rows = {"group": n * 32, "instance": n * c, "layer": n}
            for grad in args.grad:
                track = args.track_running_stats or args.eval
                pairs = {
                    "group": (GroupMap(32, c, grad=grad, track_running_stats=track), nn.GroupNorm(32, c)),
                    "instance": (InstanceMap(c, grad=grad, track_running_stats=track), nn.InstanceNorm2d(c)),
                    "layer": (
                        LayerMap([c, h, w], grad=grad, track_running_stats=track),
                        nn.LayerNorm([c, h, w]),
                    ),
                }
                for kind in args.layers:
                    cand, anchor = (m.to(device) for m in pairs[kind])
                    if args.eval:
                        cand(x)
                        cand.eval()
                    for path in _paths(device, grad):
                        _rank_map_triton.ENABLED = path == "fused"
                        r = _pair(cand, anchor, x, args.repeats)
                        floor = _sort_floor(x, rows[kind], args.repeats) / r["fwd_bwd_anchor_ms"]
                        kernel = "-"
                        if device.type == "cuda":
                            g = torch.randn_like(x)
                            kernel = f"{_kernel_us(cand, x, g) / _kernel_us(anchor, x, g):.1f}"
                        label = f"{type(cand).__name__}[{grad},{path}{',eval' if args.eval else ''}]"
                        print(
                            f"{device.type:<6} {shape_name + str(shape):<18} {label:<28} "
                            f"{r['fwd_ms']:>8.2f} {r['fwd_anchor_ms']:>8.2f} "
                            f"{r['fwd_ms'] / r['fwd_anchor_ms']:>6.1f} "
                            f"{r['fwd_bwd_ms']:>8.2f} {r['fwd_bwd_anchor_ms']:>8.2f} "
                            f"{r['fwd_bwd_ms'] / r['fwd_bwd_anchor_ms']:>6.1f} {floor:>6.1f} {kernel:>6} "
                            f"{r['saved_mb']:>9.1f} {r['saved_anchor_mb']:>7.1f}",
                            flush=True,
                        )
                    _rank_map_triton.ENABLED = True


if __name__ == "__main__":
    main()
