"""H0 persistence: shiftlab's tiled Borůvka vs ripser, giotto-ph and scipy single linkage.

Usage::

    python benchmarks/h0.py                       # n = 1k, 5k, 20k at d = 64 on the CPU (+ CUDA if present)
    python benchmarks/h0.py --sizes 1000 5000 --repeats 5 --out h0.json

Every (method, n) runs in a fresh subprocess; after imports and data creation its peak-RSS mark is reset
(Linux ``/proc/self/clear_refs``), and the figure reported is the peak RSS during the runs minus the RSS
at the reset: what the computation itself allocated. Times are the median of
``--repeats`` runs (one run for the slow anchors, which say so). Points are float32 standard normal
in d = 64, seeded. Each method's total persistence is compared with shiftlab's, so a fast wrong answer
would show. ripser and giotto-ph form the full distance matrix; they are skipped above ``--dense-max``
points (default 5,000), which the table says. On CUDA, shiftlab is also run at n = 100k (time includes
the synchronisation; memory is ``torch.cuda.max_memory_allocated``).

Wall times on a shared machine are noisy: compare ratios from one run of this script, not numbers
from different runs. On a loaded machine, ``--threads 1`` avoids OpenMP threads waiting on each other
(scipy's single linkage and ripser are single-threaded anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

METHODS = ("shiftlab", "ripser", "giotto-ph", "scipy")
DENSE = ("ripser", "giotto-ph")
SLOW_SINGLE_RUN = ("ripser", "giotto-ph")


def _points(n: int, d: int, seed: int) -> Any:
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _runner(method: str, device: str, threads: int) -> Any:
    """A function points -> sorted finite deaths (numpy), importing only what the method needs."""
    import numpy as np

    if method == "shiftlab":
        import torch

        from shiftlab.functional.topology import h0_persistence

        torch.set_num_threads(threads)

        def run(x: Any) -> Any:
            t = torch.from_numpy(x).to(device)
            deaths = h0_persistence(t).deaths.numpy()
            if device == "cuda":
                torch.cuda.synchronize()
            return deaths

        return run
    if method == "ripser":
        from ripser import ripser

        return lambda x: np.sort(ripser(x, maxdim=0)["dgms"][0][:-1, 1])
    if method == "giotto-ph":
        from gph import ripser_parallel

        return lambda x: np.sort(ripser_parallel(x, maxdim=0, n_threads=threads)["dgms"][0][:-1, 1])
    if method == "scipy":
        from scipy.cluster.hierarchy import linkage

        return lambda x: linkage(x, "single")[:, 2]
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the process's peak RSS (Linux clear_refs 5) and return the current RSS in kB.

    Without the reset the peak would still hold the import-time high-water mark, hiding any smaller
    peak of the computation. Where the reset is not available, fall back to ru_maxrss (an underestimate).
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return _status_kb("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss() -> int:
    try:
        return _status_kb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(method: str, n: int, d: int, seed: int, repeats: int, device: str, threads: int) -> dict[str, Any]:
    """Run one method in this (fresh) process and return timings and memory."""
    run = _runner(method, device, threads)
    x = _points(n, d, seed)
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    base_kb = _reset_peak_rss()
    times = []
    deaths = None
    for _ in range(repeats):
        start = time.perf_counter()
        deaths = run(x)
        times.append(time.perf_counter() - start)
    peak_kb = _peak_rss()
    out: dict[str, Any] = {
        "method": method,
        "device": device,
        "n": n,
        "d": d,
        "repeats": repeats,
        "threads": threads,
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_increase_mb": (peak_kb - base_kb) / 1024,
        "total_persistence": float(deaths.sum()),
        "n_deaths": int(deaths.size),
    }
    if device == "cuda":
        import torch

        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _spawn(method: str, n: int, args: argparse.Namespace, device: str) -> dict[str, Any] | None:
    repeats = 1 if method in SLOW_SINGLE_RUN else args.repeats
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        str(n),
        str(args.d),
        str(args.seed),
        str(repeats),
        device,
        str(args.threads),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        print(f"  {method} n={n} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _available(method: str) -> bool:
    import importlib.util

    module = {"shiftlab": "shiftlab", "ripser": "ripser", "giotto-ph": "gph", "scipy": "scipy"}[method]
    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-max", type=int, default=5000, help="largest n for ripser / giotto-ph")
    parser.add_argument("--gpu-sizes", type=int, nargs="+", default=[1000, 5000, 20000, 100000])
    parser.add_argument("--out", help="also write all results as JSON here")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="CPU threads for every method (OMP_NUM_THREADS)",
    )
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, n, d, seed, repeats, device, threads = args.worker
        print(json.dumps(worker(method, int(n), int(d), int(seed), int(repeats), device, int(threads))))
        return

    import torch

    results: list[dict[str, Any]] = []
    print(f"H0 of n float32 standard-normal points in d={args.d} (CPU threads per method: {args.threads})")
    print(f"{'n':>7} {'method':>10} {'median s':>10} {'peak MB':>9} {'x shiftlab':>11} {'|dTP|':>9}")
    for n in args.sizes:
        ours: dict[str, Any] | None = None
        for method in METHODS:
            if not _available(method):
                print(f"{n:>7} {method:>10}  not installed")
                continue
            if method in DENSE and n > args.dense_max:
                print(f"{n:>7} {method:>10}  skipped (dense n x n matrix; n > --dense-max {args.dense_max})")
                continue
            res = _spawn(method, n, args, "cpu")
            if res is None:
                continue
            results.append(res)
            if method == "shiftlab":
                ours = res
            ratio = res["median_s"] / ours["median_s"] if ours else float("nan")
            diff = abs(res["total_persistence"] - ours["total_persistence"]) if ours else float("nan")
            note = " (1 run)" if res["repeats"] == 1 else ""
            print(
                f"{n:>7} {method:>10} {res['median_s']:>10.3f} {res['peak_rss_increase_mb']:>9.1f} "
                f"{ratio:>10.1f}x {diff:>9.2g}{note}"
            )
    if torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name(0)}")
        for n in args.gpu_sizes:
            res = _spawn("shiftlab", n, args, "cuda")
            if res is not None:
                results.append(res)
                print(
                    f"{n:>7} {'shiftlab':>10} {res['median_s']:>10.3f} {res['cuda_peak_mb']:>9.1f} (CUDA MB)"
                )
    if args.out:
        from shiftlab.report import atomic_write_text

        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
