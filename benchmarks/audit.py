"""Metric-audit benchmark: the vectorised bootstrap and fim_norm against Python loops, in one run.

Run: ``.venv/bin/python benchmarks/audit.py`` (add ``--threads 1`` to pin torch to one thread). Prints
medians of repeated wall-clock timings (this machine is shared, so single timings are noisy) and ratios:

1. Bootstrap audit. The original's later release resamples runs in a Python loop and re-ranks and
   re-fits every draw; it took 13.6 s for 200 draws on 160 runs (the issue's anchor, measured elsewhere
   with pandas). The Python-loop version below does the same work with numpy and scipy (one metric, one
   baseline, rank then least squares per draw); ``MBEEvaluator`` does it vectorised. Then the issue's goal:
   a 1,000-draw audit of 500 runs x 5 metrics under 1 s on CPU.
2. ``fim_norm`` at N = 256 on a 235k-parameter MLP (784-256-128-10): a per-sample autograd loop vs
   ``torch.func`` vmap vs the Gram identity (goal: at least 10x faster than the loop).

Everything runs on the CPU, and again on CUDA when ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.stats
import torch
from torch import nn

from shiftlab.audit import MBEConfig, MBEEvaluator, fim_norm
from shiftlab.data import DatasetNotAvailableError, load

ANCHOR_SECONDS = 13.6  # original: 200 draws on 160 runs (issue 6)


def _median_time(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    fn()  # warm up (lazy imports, allocator, kernels)
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _runs(n: int, n_metrics: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    loss = rng.normal(size=n)
    acc = -loss + rng.normal(size=n)
    metrics = loss[:, None] + rng.normal(size=(n, n_metrics))
    return metrics, loss, acc


def _partial_rank_loop(
    metric: np.ndarray, baseline: np.ndarray, target: np.ndarray, n_boot: int
) -> np.ndarray:
    """The original's per-draw loop: resample, rank, least-squares residuals, correlate (numpy/scipy)."""
    rng = np.random.default_rng(0)
    n = len(target)
    out = np.empty((n_boot, 2))
    for b in range(n_boot):
        idx = rng.choice(n, size=n, replace=True)
        x, y = scipy.stats.rankdata(metric[idx]), scipy.stats.rankdata(target[idx])
        design = np.column_stack([np.ones(n), scipy.stats.rankdata(baseline[idx])])
        ex = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
        ey = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
        out[b, 0] = np.corrcoef(x, y)[0, 1]
        out[b, 1] = np.corrcoef(ex, ey)[0, 1]
    return out


def bench_bootstrap(device: str) -> None:
    print(f"\n== bootstrap audit ({device}, torch threads {torch.get_num_threads()}) ==")
    metrics, loss, acc = _runs(160, 1)
    plain = MBEConfig(n_boot=200, sanity_controls=False)
    ours = _median_time(
        lambda: MBEEvaluator("m", "val_loss", config=plain, device=device).evaluate(metrics, loss, acc),
        7,
        device,
    )
    if device == "cpu":
        loop = _median_time(lambda: _partial_rank_loop(metrics[:, 0], loss, acc, 200), 3)
        print(f"160 runs x 1 metric x 200 draws: Python loop {loop:.3f} s, vectorised {ours:.4f} s ", end="")
        print(f"({loop / ours:.0f}x)")
    print(
        f"160 runs x 1 metric x 200 draws: vectorised {ours:.4f} s; original {ANCHOR_SECONDS} s "
        f"(anchor from the issue, other machine): {ANCHOR_SECONDS / ours:.0f}x"
    )
    metrics, loss, acc = _runs(500, 5)
    names = [f"m{j}" for j in range(5)]
    times = {}
    for controls in (False, True):
        cfg = MBEConfig(n_boot=1000, sanity_controls=controls)
        ev = MBEEvaluator(names, "val_loss", config=cfg, device=device)
        times[controls] = _median_time(lambda ev=ev: ev.evaluate(metrics, loss, acc), 5, device)
        label = "5 metrics + 3 sanity controls" if controls else "5 metrics"
        goal = "under 1 s: yes" if times[controls] < 1 else "under 1 s: NO"
        print(f"500 runs x {label} x 1000 draws: {times[controls]:.3f} s ({goal})")
    if device == "cpu":
        loop = _median_time(lambda: [_partial_rank_loop(metrics[:, j], loss, acc, 1000) for j in range(5)], 1)
        print(f"500 runs x 5 metrics x 1000 draws, Python loop: {loop:.2f} s ", end="")
        print(f"({loop / times[False]:.0f}x the vectorised audit of the same 5 metrics)")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def _fim_loop(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> float:
    """Per-sample gradients in a Python loop (the original's form), then the same effective rank."""
    net = copy.deepcopy(model).eval()
    rows = []
    for i in range(x.shape[0]):
        net.zero_grad()
        nn.functional.cross_entropy(net(x[i : i + 1]), t[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.grad is not None]))
    g = torch.stack(rows).double()
    ev = torch.linalg.eigvalsh(g @ g.T / x.shape[0]).clamp(min=0)
    p = ev[ev > 0] / ev.sum()
    return float(torch.exp(-(p * p.log()).sum())) / x.shape[0]


def _inputs(device: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        data = load("mnist-5k", "train")
        x, t, source = data.images.flatten(1)[:256], data.labels[:256], "MNIST-5k"
    except DatasetNotAvailableError:
        gen = torch.Generator().manual_seed(0)
        x, t, source = (
            torch.rand(256, 784, generator=gen),
            torch.randint(0, 10, (256,), generator=gen),
            "random",
        )
    return x.to(device), t.to(device), source


def bench_fim(device: str) -> None:
    model = _mlp().to(device)
    x, t, source = _inputs(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n== fim_norm, N = 256, MLP with {n_params:,} parameters, {source} inputs ({device}) ==")
    ce = nn.functional.cross_entropy
    value = {
        "loop": _fim_loop(model, x, t),
        "vmap": fim_norm(model, ce, x, t, n=256, method="vmap").value,
        "gram": fim_norm(model, ce, x, t, n=256, method="linear").value,
    }
    times = {
        "loop": _median_time(lambda: _fim_loop(model, x, t), 3, device),
        "vmap": _median_time(lambda: fim_norm(model, ce, x, t, n=256, method="vmap"), 5, device),
        "gram": _median_time(lambda: fim_norm(model, ce, x, t, n=256, method="linear"), 5, device),
    }
    for name in ("loop", "vmap", "gram"):
        speed = times["loop"] / times[name]
        print(f"{name:>5}: {times[name]:.4f} s  FIM_norm {value[name]:.6f}  ({speed:.1f}x the loop)")
    agree = max(abs(value["vmap"] - value["loop"]), abs(value["gram"] - value["loop"]))
    verdicts = {name: "yes" if times["loop"] / times[name] >= 10 else "NO" for name in ("vmap", "gram")}
    print(f"largest difference from the loop: {agree:.2e}; at least 10x the loop: {verdicts}")
    print("fim_norm's default (method='auto') takes the Gram path for this model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before timing")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    for device in devices:
        bench_bootstrap(device)
        bench_fim(device)


if __name__ == "__main__":
    main()
