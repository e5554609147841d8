"""Calibrate LayerPHMonitor: mean H0 death over layers (CKA distance), healthy nets vs planted collapses.

    OMP_NUM_THREADS=1 python examples/ph_layers.py [--seeds 0 1 2 3 4 5 6 7] [--out runs/ph_layers.json]
    python examples/ph_layers.py --summarise runs/ph_layers.json

Healthy: every model family (mlp, cnn, purefield) trained with Adam at lr 1e-3 on the UCI digits train
split, read after 1, 3, 10 and 30 epochs; the MLP also on MNIST-5k. Planted collapses, each on the MLP
trained for 10 epochs on digits (same seeds):

- ``identical``: fc1 followed by two identity layers (monitored fc1, copy1, copy2): three layers that
  carry one representation;
- ``rank-r fc1`` (r = 1, 2, 3): fc1's weight replaced by its best rank-r approximation, so every later
  layer is a function of r numbers (a bottleneck at the first layer);
- ``rank-1 fc2``: the same at the second layer (only fc2 and the head collapse);
- ``dead p``: a share p of the units of fc1 and fc2 killed (bias -1e4: the ReLU is 0 on every input);
- ``lr 1.0``: each family trained 10 epochs at lr 1.0 (the usual way a run dies).

The probe is the first 256 images of the digits test split (the trainer uses 256 validation images).
The summary prints, per case, the minimum / median / maximum of the statistic over seeds and read-outs
and the states under the default :class:`~shiftlab.topology.LayerConfig`: the numbers quoted there.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import Counter, OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from shiftlab.data import load
from shiftlab.report import atomic_write_text
from shiftlab.topology import LayerConfig, LayerPHMonitor, LayerStep, build_model, monitored_layers


def _train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, lr: float) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(y.numel(), generator=gen).split(128):
            opt.zero_grad()
            functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).double().mean())


def _record(case: str, seed: int, step: LayerStep, accuracy: float) -> dict[str, Any]:
    return {
        "case": case,
        "seed": seed,
        "mean_death": step.mean_death,
        "min_death": None if step.diagram is None else float(step.diagram.deaths.min()),
        "max_death": None if step.diagram is None else float(step.diagram.deaths.max()),
        "effective_ranks": list(step.effective_ranks),
        "min_rank": step.min_rank,
        "inactive_fractions": list(step.inactive_fractions),
        "max_inactive": step.max_inactive,
        "constant_layers": list(step.constant_layers),
        "state": step.state.value,
        "test_accuracy": accuracy,
    }


def _linear(net: nn.Module, name: str) -> nn.Linear:
    layer = net.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return layer


def _low_rank(layer: nn.Linear, rank: int) -> None:
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(layer.weight, full_matrices=False)
        layer.weight.copy_((u[:, :rank] * s[:rank]) @ vh[:rank])


def _kill(layer: nn.Linear, share: float, gen: torch.Generator) -> None:
    with torch.no_grad():
        dead = torch.randperm(layer.out_features, generator=gen)[: round(share * layer.out_features)]
        layer.bias[dead] = -1e4


def _planted(base: nn.Module, seed: int) -> dict[str, tuple[nn.Module, tuple[str, ...]]]:
    mlp_layers = monitored_layers("mlp")
    out: dict[str, tuple[nn.Module, tuple[str, ...]]] = {}
    copies = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=copy.deepcopy(_linear(base, "fc1")),
            copy1=nn.Identity(),
            copy2=nn.Identity(),
        )
    )
    out["identical"] = (copies, ("fc1", "copy1", "copy2"))
    for rank in (1, 2, 3):
        net = copy.deepcopy(base)
        _low_rank(_linear(net, "fc1"), rank)
        out[f"rank-{rank} fc1"] = (net, mlp_layers)
    net = copy.deepcopy(base)
    _low_rank(_linear(net, "fc2"), 1)
    out["rank-1 fc2"] = (net, mlp_layers)
    for share in (0.9, 0.98, 1.0):
        net = copy.deepcopy(base)
        gen = torch.Generator().manual_seed(seed)
        _kill(_linear(net, "fc1"), share, gen)
        _kill(_linear(net, "fc2"), share, gen)
        out[f"dead {share:g}"] = (net, mlp_layers)
    return out


def measure(seeds: list[int]) -> list[dict[str, Any]]:
    digits, digits_test = load("digits", "train"), load("digits", "test")
    mnist, mnist_test = load("mnist-5k", "train"), load("mnist-5k", "test")
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        runs = [("digits", name, digits, digits_test) for name in ("mlp", "cnn", "purefield")]
        runs.append(("mnist-5k", "mlp", mnist, mnist_test))
        for dataset, name, train, test in runs:
            probe = test.images[:256]
            net = build_model(name, tuple(train.images.shape[1:]), 10, seed=seed)  # type: ignore[arg-type]
            monitor = LayerPHMonitor(monitored_layers(name))
            done = 0
            for epochs in (1, 3, 10, 30):
                _train(net, train.images, train.labels, epochs - done, seed, 1e-3)
                done = epochs
                acc = _accuracy(net, test.images, test.labels)
                rows.append(
                    _record(f"healthy {name} {dataset} ep{epochs}", seed, monitor.update(net, probe), acc)
                )
                if (name, epochs) == ("mlp", 10):
                    for case, (planted, layers) in _planted(net, seed).items():
                        step = LayerPHMonitor(layers).update(planted, probe)
                        acc = _accuracy(planted, test.images, test.labels)
                        rows.append(_record(f"{case} {dataset}", seed, step, acc))
        for name in ("mlp", "cnn", "purefield"):
            net = build_model(name, (1, 8, 8), 10, seed=seed)
            _train(net, digits.images, digits.labels, 10, seed, 1.0)
            step = LayerPHMonitor(monitored_layers(name)).update(net, digits_test.images[:256])
            rows.append(
                _record(f"lr 1.0 {name}", seed, step, _accuracy(net, digits_test.images, digits_test.labels))
            )
        print(f"seed {seed} done", flush=True)
    return rows


def _spread(values: list[float]) -> str:
    values = sorted(values)
    return f"{values[0]:7.4g} {values[len(values) // 2]:7.4g} {values[-1]:7.4g}"


def _state(row: dict[str, Any], config: LayerConfig) -> str:
    """The state under ``config`` (recomputed from the saved readings, so thresholds can be compared)."""
    if row["mean_death"] is None:
        return "COLLAPSE"  # a constant (dead) layer
    return config.state(row["mean_death"], row["min_rank"], row.get("max_inactive")).value


def summarise(rows: list[dict[str, Any]]) -> None:
    config = LayerConfig()
    print(
        f"defaults: COLLAPSE if mean death < {config.collapse}, min rank < {config.rank_collapse} or "
        f"dead units >= {config.inactive_collapse}; WATCH if mean death < {config.watch}, min rank < "
        f"{config.rank_watch} or dead units >= {config.inactive_watch}"
    )
    header = (
        f"{'mean death: min  median   max':>29}  {'min rank: min  median   max':>27}  "
        f"{'dead units: min median max':>26}"
    )
    print(f"{'case':<30} {'n':>2}  {header}  acc")
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]
        deaths = [r["mean_death"] for r in rs if r["mean_death"] is not None]
        death = _spread(deaths) if deaths else "constant layers"
        acc = sum(r["test_accuracy"] for r in rs) / len(rs)
        states = dict(Counter(_state(r, config) for r in rs))
        rank = _spread([r["min_rank"] for r in rs])
        dead = _spread([r["max_inactive"] for r in rs if r.get("max_inactive") is not None] or [float("nan")])
        print(f"{case:<30} {len(rs):>2}  {death:>29}  {rank:>27}  {dead:>26}  {acc:.3f}  {states}")
    healthy = [r for r in rows if r["case"].startswith("healthy")]
    print(
        f"\nall {len(healthy)} healthy readings: mean death >= {min(r['mean_death'] for r in healthy):.4f}, "
        f"min rank >= {min(r['min_rank'] for r in healthy):.2f}, "
        f"dead units <= {max(r['max_inactive'] for r in healthy):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--out", default="runs/ph_layers.json")
    parser.add_argument(
        "--summarise", nargs="+", metavar="JSON", help="only summarise saved runs (files are pooled)"
    )
    args = parser.parse_args()
    if args.summarise:
        saved: list[dict[str, Any]] = []
        for path in args.summarise:
            with open(path, encoding="utf-8") as fh:
                saved.extend(json.load(fh))
        summarise(saved)
        return
    rows = measure(args.seeds)
    atomic_write_text(args.out, json.dumps(rows, indent=1, allow_nan=False) + "\n")
    summarise(rows)


if __name__ == "__main__":
    main()
