"""Wall time and peak memory of the PMH arms on MNIST → UCI digits (`shiftlab try` without the report).

Anchor: one plain training run of the same MLP on the same data (the cost a user pays anyway). Printed:
the time to build the two-site pair, the median wall time of ``run_arms`` over ``--repeats`` runs, its
ratio to the anchor, the number of training runs inside, peak resident memory (CPU) or peak allocated
GPU memory, and the deploy table of the last repeat. Goal (issue 4): the quick budget, every arm of every
seed really trained, under 60 s end to end on 2 CPU cores; the full budget on a GPU.

Run: ``.venv/bin/python benchmarks/pmh_arms.py [--full] [--repeats 3] [--device cpu|cuda|both]
[--threads 1]``.
The machine this was written on is shared (2 cores, other jobs running): read medians, not single runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time

import torch

from shiftlab.pmh._arms import run_arms
from shiftlab.pmh._digits import digits_budget, digits_mlp
from shiftlab.pmh._trainer import PMHTrainer


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(device: str, full: bool, repeats: int) -> None:
    budget = digits_budget(quick=not full, device=device)
    began = time.perf_counter()
    pair = budget.pair(seed=0)
    load = time.perf_counter() - began
    config = dataclasses.replace(budget.config, strength=0.0)
    anchors, times = [], []
    for _ in range(repeats):
        torch.manual_seed(0)
        _sync(device)
        t0 = time.perf_counter()
        PMHTrainer(digits_mlp(), config=config).fit((pair.source_train.x, pair.source_train.y), quiet=True)
        _sync(device)
        anchors.append(time.perf_counter() - t0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = run_arms(
            digits_mlp, pair, seeds=budget.seeds, strengths=budget.strengths, config=budget.config, quiet=True
        )
        _sync(device)
        times.append(time.perf_counter() - t0)
    assert result is not None
    anchor, arms_time = statistics.median(anchors), statistics.median(times)
    penalised = [a for a in result.arms if a in ("matched", "isotropic", "wrong", "signal")]
    fixed = len(result.arms) - len(penalised)
    n_runs = len(result.seeds) * (fixed + len(penalised) * len(result.strengths))
    if device.startswith("cuda"):
        memory = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    else:
        memory = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    name = "full" if full else "quick"
    print(
        f"[{device}, {name}, threads={torch.get_num_threads()}] data {load:.1f} s; plain run (anchor) "
        f"{anchor:.2f} s; run_arms median {arms_time:.1f} s over {repeats} "
        f"({min(times):.1f}-{max(times):.1f}) = {arms_time / anchor:.1f}x anchor for {n_runs} training runs; "
        f"end to end {load + arms_time:.1f} s; {memory}"
    )
    for row in result.table():
        print(
            f"  {row['arm']:12} {row['selection']:10} deploy {100 * row['deploy_mean']:5.1f} ± "
            f"{100 * row['deploy_std']:3.1f}  source val {100 * row['source_val_mean']:5.1f}  "
            f"λ {row['strengths']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full budget instead of --quick")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda", "both"), default="both")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "both" and torch.cuda.is_available():
        devices.append("cuda")
    for device in devices:
        bench(device, args.full, args.repeats)


if __name__ == "__main__":
    main()
