"""PMH trainer throughput, 1 vs 2 processes: images/s with the penalty and plain, data-parallel.

Anchor: the same trainer in one process (one GPU, or one CPU process) on the same global batches.
Each world size is one launch (``shiftlab.integrations.distributed.launch``: ``torch.multiprocessing``
spawn, NCCL on GPUs, gloo on CPU) of ``PMHTrainer.fit`` for every mode:

* ``plain``: the trainer without penalty;
* ``pmh-fd``: the default penalty (one finite-difference probe), rank-8 Σ at the input;
* ``pmh-jvp``: the exact penalty (8 JVP directions through ``torch.func``);
* ``ddp-plain``: a bare ``DistributedDataParallel`` loop (forward, cross-entropy, backward, Adam) on the
  same model and batches, to show what the trainer's own gradient all-reduce (after the backward,
  not overlapped with it) costs against DDP's overlapped buckets.

Data are **synthetic** tensors (uniform 1×28×28 images, random labels from 10 classes, on the device):
a throughput benchmark needs no real images. The model is a 4-conv CNN (32·w, 32·w, 64·w, 64·w
channels, ``--width`` w), large enough at w = 4 and a global batch of 512 for a GPU step to be
compute-bound, so that 2 GPUs can show a speedup. Throughput = images per epoch / median epoch wall
time over the epochs after the first (warm-up), timed on rank 0 with CUDA synchronised.

Every process the script starts runs with NVLink multicast off (``NCCL_NVLS_ENABLE=0``,
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``, ``NVSHMEM_DISABLE_NVLS=1``; set in this process too).

``--ddp-check`` runs instead the measurements behind the trainer's choice of its own gradient
all-reduce over DDP: the PMH penalty through a DDP-wrapped model and through its inner module, per
estimator and ``vectorize`` setting, for two steps on 2 gloo CPU processes; then, in one process on
``--device``, the step time of the exact estimators with ``vectorize=False`` (the only setting under
which they survive DDP) against the vectorised default (``--epochs`` + 2 steps, median after 2).

Run::

    PYTHONPATH=src python3 benchmarks/pmh_ddp.py                      # 1 vs 2 GPUs (NCCL)
    .venv/bin/python benchmarks/pmh_ddp.py --device cpu --width 1 --batch 64 --steps 4 --epochs 3
    .venv/bin/python benchmarks/pmh_ddp.py --ddp-check --device cpu --width 1 --batch 64
    PYTHONPATH=src python3 benchmarks/pmh_ddp.py --ddp-check --device cuda --worlds 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from shiftlab.integrations.distributed import SAFE_ENV, launch
from shiftlab.pmh import NuisanceEstimate, PMHPenalty, PMHTrainer, TrainConfig

os.environ.update(SAFE_ENV)

MODES = ("plain", "pmh-fd", "pmh-jvp", "ddp-plain")
RANK = 8


def cnn(width: int) -> nn.Module:
    """4 conv layers (32, 32, 64, 64 channels, times ``width``) on 1×28×28 inputs, 10 classes."""

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()]

    a, b = 32 * width, 64 * width
    return nn.Sequential(
        *block(1, a),
        *block(a, a),
        nn.MaxPool2d(2),
        *block(a, b),
        *block(b, b),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(b * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def synthetic(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, NuisanceEstimate]:
    """Images, labels and a rank-8 input Σ, identical on every rank (one seeded generator)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    factor, _ = torch.linalg.qr(torch.randn(28 * 28, RANK, generator=g))
    spectrum = torch.cat([torch.linspace(1.0, 0.2, RANK), torch.zeros(28 * 28 - RANK)])
    estimate = NuisanceEstimate(
        factor * spectrum[:RANK].sqrt(), 0.0, spectrum, "input", (1, 28, 28), "demo", {}
    )
    return x.to(device), y.to(device), estimate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _epoch_times(device: torch.device) -> tuple[list[float], Any]:
    stamps = [time.perf_counter()]

    def mark(_log: Any) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    return stamps, mark


def _ddp_plain(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: Any, world: int, rank: int
) -> list[float]:
    from torch.nn.parallel import DistributedDataParallel

    device = x.device
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for epoch in range(args.epochs):
        _sync(device)
        began = time.perf_counter()
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(epoch)).to(device)
        for start in range(0, x.shape[0], args.batch):
            rows = order[start : start + args.batch]
            rows = rows[rank * rows.shape[0] // world : (rank + 1) * rows.shape[0] // world]
            opt.zero_grad(set_to_none=True)
            loss_fn(ddp(x[rows]), y[rows]).backward()
            opt.step()
        _sync(device)
        times.append(time.perf_counter() - began)
    return times


def worker(rank: int, world: int, args: Any, out: str) -> None:
    """Every mode on this rank; rank 0 writes the median epoch seconds per mode."""
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    x, y, estimate = synthetic(args.batch * args.steps, device)
    results: dict[str, Any] = {}
    for mode in args.modes:
        torch.manual_seed(0)
        model = cnn(args.width).to(device)
        if mode == "ddp-plain":
            times = _ddp_plain(model, x, y, args, world, rank)
        else:
            config = TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch,
                lr=1e-3,
                device=str(device),
                strength=0.0 if mode == "plain" else 0.1,
                estimator="jvp" if mode == "pmh-jvp" else "fd",
            )
            stamps, mark = _epoch_times(device)
            PMHTrainer(model, config=config).fit((x, y), estimate=estimate, quiet=True, on_epoch_end=mark)
            times = [b - a for a, b in itertools.pairwise(stamps)]
        results[mode] = times[1:]
    if rank == 0:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        results["_meta"] = {"device": name, "backend": dist.get_backend(), "world": world}
        Path(out, f"world{world}.json").write_text(json.dumps(results))


def throughput(args: Any) -> None:
    if args.device == "cuda" and torch.cuda.device_count() < max(args.worlds):
        raise SystemExit(f"--device cuda needs {max(args.worlds)} GPUs; {torch.cuda.device_count()} visible")
    backend = "nccl" if args.device == "cuda" else "gloo"
    images = args.batch * args.steps
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        for world in args.worlds:
            launch(worker, world, args, out, backend=backend)
            rows[world] = json.loads(Path(out, f"world{world}.json").read_text())
    meta = rows[args.worlds[0]]["_meta"]
    print(
        f"# {meta['device']}, backend {backend}, CNN width {args.width}, global batch {args.batch}, "
        f"{images} synthetic images/epoch, median of {args.epochs - 1} epochs after 1 warm-up"
    )
    header = "| mode | " + " | ".join(f"{w} proc img/s" for w in args.worlds)
    print(header + (" | speedup |" if len(args.worlds) > 1 else " |"))
    print("|" + "---|" * (len(args.worlds) + 1 + (len(args.worlds) > 1)))
    for mode in args.modes:
        speeds = [images / statistics.median(rows[w][mode]) for w in args.worlds]
        cells = " | ".join(f"{s:,.0f}" for s in speeds)
        ratio = f" | {speeds[-1] / speeds[0]:.2f}x |" if len(speeds) > 1 else " |"
        print(f"| {mode} | {cells}{ratio}")
    plain = {w: images / statistics.median(rows[w]["plain"]) for w in args.worlds if "plain" in rows[w]}
    for mode in ("pmh-fd", "pmh-jvp"):
        if mode in args.modes and plain:
            ratios = [plain[w] / (images / statistics.median(rows[w][mode])) for w in plain]
            print(
                f"# {mode} step / plain step: "
                + ", ".join(f"{r:.2f}x" for r in ratios)
                + f" ({list(plain)} procs)"
            )


def _check(rank: int, world: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    factor = torch.eye(6)[:, :2]
    estimate = NuisanceEstimate(factor, 0.0, torch.tensor([1.0, 1.0]), "input", (6,), "demo", {})
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    lines = []
    for estimator in ("fd", "hutchinson", "jvp"):
        for vectorize in (True, False):
            for through in ("DDP module", "inner module"):
                torch.manual_seed(0)
                net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
                ddp = DistributedDataParallel(net)  # fresh: DDP rebuilds its buckets in its second forward
                penalty = PMHPenalty(estimate, estimator=estimator, n_probes=2, vectorize=vectorize)
                verdict = "ok: gradients synchronised at both steps"
                for step in (1, 2):
                    try:
                        out_ = penalty(ddp if through == "DDP module" else ddp.module, x)
                        (nn.functional.cross_entropy(out_.output, y) + out_.value).backward()
                    except RuntimeError as err:
                        verdict = f"step {step}: error: {str(err).splitlines()[0][:80]}"
                        break
                    grads = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
                    gathered = [torch.zeros_like(grads) for _ in range(world)]
                    dist.all_gather(gathered, grads)
                    for p in net.parameters():
                        p.grad = None
                    if not torch.equal(gathered[0], gathered[1]):
                        verdict = f"step {step}: ran, gradients NOT synchronised"
                        break
                lines.append(f"| {estimator} | {vectorize} | {through} | {verdict} |")
    if rank == 0:
        Path(out).write_text("\n".join(lines))


def vectorize_cost(args: Any) -> None:
    """What DDP would cost the exact estimators: a penalised step with ``vectorize=False`` (the only
    setting DDP survives for jvp and hutchinson) against the vectorised default, one process."""
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    x, y, estimate = synthetic(args.batch, device)
    print(f"# one process on {device}: penalised step time, CNN width {args.width}, batch {args.batch}")
    print("| estimator | vectorize=True | vectorize=False | ratio |\n|---|---|---|---|")
    for estimator in ("jvp", "hutchinson"):
        cells = []
        for vectorize in (True, False):
            torch.manual_seed(0)
            model = cnn(args.width).to(device)
            penalty = PMHPenalty(estimate, estimator=estimator, n_probes=2, vectorize=vectorize).to(device)
            samples = []
            for i in range(args.epochs + 2):
                _sync(device)
                began = time.perf_counter()
                out = penalty(model, x)
                (nn.functional.cross_entropy(out.output, y) + 0.1 * out.value).backward()
                model.zero_grad(set_to_none=True)
                _sync(device)
                if i >= 2:  # two warm-up steps
                    samples.append(time.perf_counter() - began)
            cells.append(statistics.median(samples))
        fast, slow = cells
        print(f"| {estimator} | {fast * 1e3:.1f} ms | {slow * 1e3:.1f} ms | {slow / fast:.2f}x |")


def ddp_check(args: Any) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        out = str(Path(scratch, "check.txt"))
        launch(_check, 2, out)
        print("# PMHPenalty under torch DDP, 2 gloo CPU processes, 2 steps each")
        print("| estimator | vectorize | penalty through | result |\n|---|---|---|---|")
        print(Path(out).read_text())
    vectorize_cost(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--batch", type=int, default=512, help="global batch size")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per mode (the first is warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per CPU process")
    parser.add_argument("--ddp-check", action="store_true")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is warm-up)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.device_count() >= max(args.worlds) else "cpu"
    if args.ddp_check:
        ddp_check(args)
        return
    throughput(args)


if __name__ == "__main__":
    main()
