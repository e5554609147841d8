"""Cost of a training step with the PMH penalty, as a ratio to a plain step, in one run.

Anchor: a plain step (forward, cross-entropy, backward, SGD update) of the same model on the same batch.
Cases: an MLP on 8x8 inputs and a 4-conv CNN on 28x28 inputs; ranks 1, 8, 32; estimators jvp (exact,
cost ~ rank), hutchinson and fd (one probe, cost independent of rank); the penalty on the full batch
(whose unperturbed output is reused for the task loss) and on a quarter of it (task loss on the full batch).

Run: ``.venv/bin/python benchmarks/pmh_penalty.py [--device cuda] [--batch 256] [--repeats 10]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from shiftlab.pmh._estimate import from_second_moment_samples
from shiftlab.pmh._penalty import PMHPenalty


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )


def cnn(width: int = 1) -> nn.Module:
    """4 conv layers (32, 32, 64, 64 channels, times ``width``) on 28x28 inputs."""

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    penalty: PMHPenalty | None,
    fraction: float,
    repeats: int,
) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if penalty is None:
            loss = loss_fn(model(x), y)
        else:
            result = penalty(model, x, fraction=fraction)
            loss = loss_fn(result.output, y) + 0.1 * result.value
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    samples = []
    for _ in range(repeats):
        _sync(x.device)
        start = time.perf_counter()
        step()
        _sync(x.device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--ranks", default="1,8,32")
    parser.add_argument(
        "--width", type=int, default=1, help="CNN channel multiplier (4: compute-bound on a GPU)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    print(
        f"device={device} batch={args.batch} repeats={args.repeats} cnn width={args.width} threads={threads}"
    )
    print(f"{'model':<5} {'estimator':<11} {'rank':>4} {'batch':>7} {'ratio':>7}")
    for name in args.models.split(","):
        model = (mlp() if name == "mlp" else cnn(args.width)).to(device)
        shape = (1, 8, 8) if name == "mlp" else (1, 28, 28)
        x = torch.rand(args.batch, *shape, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        plain = time_step(model, x, y, None, 1.0, args.repeats)
        print(f"{name:<5} {'plain':<11} {'-':>4} {'full':>7} {1.0:7.2f}   ({plain * 1e3:.1f} ms)")
        d = x[0].numel()
        for rank in (int(r) for r in args.ranks.split(",")):
            deltas = torch.randn(4 * rank + 8, d, device=device)
            est = from_second_moment_samples(
                deltas, site="input", shape=shape, estimator="bench", counts={}, rank=rank
            )
            for estimator in ("jvp", "hutchinson", "fd"):
                if estimator != "jvp" and rank != 8:
                    continue  # one probe costs the same at every rank
                penalty = PMHPenalty(est, estimator=estimator, n_probes=1)
                for fraction, label in ((1.0, "full"), (0.25, "quarter")):
                    t = time_step(model, x, y, penalty, fraction, args.repeats)
                    shown_rank = rank if estimator == "jvp" else "any"
                    print(f"{name:<5} {estimator:<11} {shown_rank!s:>4} {label:>7} {t / plain:7.2f}")


if __name__ == "__main__":
    main()
