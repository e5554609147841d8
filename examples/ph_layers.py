"""Layer-monitor reference values: mean H0 death over layers (CKA distance) before and after training.

    python examples/ph_layers.py

Trains each model family on UCI digits for 10 epochs with Adam at lr 1e-3 (healthy) and at lr 1.0
(usually dies), and prints LayerPHMonitor's statistic at initialisation and after training, the layer
state, any constant (dead) layers, the CKA matrix and the training accuracy. These are the numbers
quoted in the LayerConfig docstring.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from shiftlab.data import load
from shiftlab.topology import LayerPHMonitor, build_model, monitored_layers


def main() -> None:
    data = load("digits", "train")
    x, y = data.images, data.labels
    probe = x[:256]
    for name in ("mlp", "cnn", "purefield"):
        for lr in (1e-3, 1.0):
            net = build_model(name, (1, 8, 8), 10, seed=0)
            monitor = LayerPHMonitor(monitored_layers(name))
            opt = torch.optim.Adam(net.parameters(), lr=lr)
            gen = torch.Generator().manual_seed(0)
            start = monitor.update(net, probe)
            for _ in range(10):
                for idx in torch.randperm(y.numel(), generator=gen).split(128):
                    opt.zero_grad()
                    functional.cross_entropy(net(x[idx]), y[idx]).backward()
                    opt.step()
            end = monitor.update(net, probe)
            with torch.no_grad():
                acc = float((net(x).argmax(1) == y).double().mean())
            trained = "undefined" if end.mean_death is None else f"{end.mean_death:.4f}"
            print(
                f"{name:>9} lr {lr:<6g} init {start.mean_death:.4f} ({start.state.value}) -> "
                f"trained {trained} ({end.state.value}), constant layers {list(end.constant_layers)}, "
                f"train accuracy {acc:.3f}"
            )
            if end.similarity is not None:
                print("          CKA:", [[round(v, 3) for v in row] for row in end.similarity.tolist()])


if __name__ == "__main__":
    main()
