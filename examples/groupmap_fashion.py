"""GroupNorm vs GroupMap (and LayerNorm vs LayerMap) in the same small CNN on real Fashion-MNIST.

Every arm trains the same architecture from the same initial seed on the same data; only the
normalisation layers differ. Arms:

- ``groupnorm`` / ``layernorm``: the torch norms (anchors);
- ``groupmap-ste`` / ``groupmap-ecdf`` / ``groupmap-softrank``: GroupMap with each backward surrogate;
- ``groupmap-nograd``: GroupMap whose input is detached (the old behaviour: layers below get no
  gradient), a control that shows how much the surrogate matters;
- ``layermap``: LayerMap with the default surrogate.

Run::

    .venv/bin/python examples/groupmap_fashion.py --quick      # 2k train / 1k test images, 2 epochs, 2 seeds
    .venv/bin/python examples/groupmap_fashion.py              # 60k / 10k, 8 epochs, 3 seeds
    python examples/groupmap_fashion.py --device cuda           # the same on a GPU

Prints test accuracy (mean and sd over seeds) and median seconds per training epoch per arm, and writes
every per-seed number as JSON (``--out``). Wall times on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from shiftlab.data import load
from shiftlab.functional.quantile import group_map
from shiftlab.nn import GroupMap, LayerMap
from shiftlab.report import atomic_write_text

CHANNELS = (8, 16, 32)
SIZES = (28, 14, 7)  # feature-map side after each pooling stage
GROUPS = 4


class _DetachedGroupMap(nn.Module):
    """Control arm: GroupMap forward with no gradient to its input."""

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_map(x.detach(), self.groups, "gaussian", self.weight, self.bias)


def _norm_factory(arm: str) -> Callable[[int, int], nn.Module]:
    makers: dict[str, Callable[[int, int], nn.Module]] = {
        "groupnorm": lambda c, s: nn.GroupNorm(GROUPS, c),
        "groupmap-ste": lambda c, s: GroupMap(GROUPS, c, grad="ste"),
        "groupmap-ecdf": lambda c, s: GroupMap(GROUPS, c, grad="ecdf"),
        "groupmap-softrank": lambda c, s: GroupMap(GROUPS, c, grad="softrank"),
        "groupmap-nograd": lambda c, s: _DetachedGroupMap(GROUPS, c),
        "layernorm": lambda c, s: nn.LayerNorm([c, s, s]),
        "layermap": lambda c, s: LayerMap([c, s, s]),
    }
    if arm not in makers:
        raise ValueError(f"unknown arm {arm!r}; valid: {', '.join(makers)}")
    return makers[arm]


ARMS = (
    "groupnorm",
    "groupmap-ste",
    "groupmap-ecdf",
    "groupmap-softrank",
    "groupmap-nograd",
    "layernorm",
    "layermap",
)


def make_cnn(arm: str) -> nn.Module:
    """conv-norm-relu-pool twice, conv-norm-relu, global average pool, linear."""
    norm = _norm_factory(arm)
    c1, c2, c3 = CHANNELS
    s1, s2, s3 = SIZES
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),
        norm(c1, s1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        norm(c2, s2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1),
        norm(c3, s3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c3, 10),
    )


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_arm(
    arm: str,
    seed: int,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    epochs: int,
    batch: int = 64,
    lr: float = 2e-3,
    device: str = "cpu",
) -> dict[str, object]:
    """Train one arm from ``seed``; return per-epoch test accuracy, train loss and seconds.

    The model is built on the CPU from the seed (the same initial weights on every device), then moved.
    """
    x_train, y_train, x_test, y_test = (t.to(device) for t in data)
    torch.manual_seed(seed)
    model = make_cnn(arm).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    accs, losses, seconds = [], [], []
    first_conv_grad = 0.0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=shuffle).to(device)
        _sync(device)
        start = time.perf_counter()
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad = model[0].weight.grad
            first_conv_grad = 0.0 if grad is None else float(grad.norm())
            opt.step()
            total += loss.item() * len(idx)
        _sync(device)
        seconds.append(time.perf_counter() - start)
        losses.append(total / len(order))
        accs.append(_accuracy(model, x_test, y_test))
    return {
        "arm": arm,
        "seed": seed,
        "test_accuracy": accs,
        "train_loss": losses,
        "seconds_per_epoch": seconds,
        "first_conv_grad_norm_last_step": first_conv_grad,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2k/1k subset, 2 epochs, 2 seeds")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--train-size", type=int)
    parser.add_argument("--test-size", type=int)
    parser.add_argument("--out", type=Path, default=Path("groupmap_fashion.json"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data-dir", type=Path, help="folder of the Fashion-MNIST idx files")
    args = parser.parse_args()
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    epochs = args.epochs or (2 if args.quick else 8)
    n_train = args.train_size or (2000 if args.quick else 60000)
    n_test = args.test_size or (1000 if args.quick else 10000)

    train = load("fashion-mnist", "train", root=args.data_dir)
    test = load("fashion-mnist", "test", root=args.data_dir)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n_train]
    data = (train.images[pick], train.labels[pick], test.images[:n_test], test.labels[:n_test])
    print(f"Fashion-MNIST: {n_train} train / {n_test} test, {epochs} epochs, seeds {seeds}, {args.device}")

    runs = []
    for arm in args.arms:
        for seed in seeds:
            res = run_arm(arm, seed, data, epochs, device=args.device)
            runs.append(res)
            acc = res["test_accuracy"]
            sec = res["seconds_per_epoch"]
            assert isinstance(acc, list) and isinstance(sec, list)
            print(f"  {arm:<18} seed {seed}: test acc {acc[-1]:.4f}  s/epoch {statistics.median(sec):.1f}")

    print(f"\n{'arm':<18} {'test acc (mean ± sd)':>22} {'s/epoch (median)':>17}")
    summary = {}
    for arm in args.arms:
        final = [r["test_accuracy"][-1] for r in runs if r["arm"] == arm]  # type: ignore[index]
        secs = [s for r in runs if r["arm"] == arm for s in r["seconds_per_epoch"]]  # type: ignore[attr-defined]
        sd = statistics.stdev(final) if len(final) > 1 else 0.0
        summary[arm] = {
            "acc_mean": statistics.mean(final),
            "acc_sd": sd,
            "sec_per_epoch": statistics.median(secs),
        }
        print(f"{arm:<18} {statistics.mean(final):>14.4f} ± {sd:.4f} {statistics.median(secs):>17.1f}")
    payload = {
        "n_train": n_train,
        "n_test": n_test,
        "epochs": epochs,
        "seeds": seeds,
        "summary": summary,
        "runs": runs,
    }
    atomic_write_text(args.out, json.dumps(payload, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
