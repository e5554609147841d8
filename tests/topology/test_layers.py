"""linear_cka, scalar_h0 and LayerPHMonitor states on networks with known layer geometry."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from shiftlab.data import load
from shiftlab.functional.spectra import effective_rank
from shiftlab.topology import (
    LayerConfig,
    LayerPHMonitor,
    LayerState,
    build_model,
    linear_cka,
    monitored_layers,
    scalar_h0,
)


def _feature_space_cka(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def test_cka_matches_the_feature_space_formula_and_its_invariances(rng: np.random.Generator) -> None:
    x = rng.normal(size=(50, 8))
    y = x @ rng.normal(size=(8, 5)) + 0.5 * rng.normal(size=(50, 5))
    assert float(linear_cka(x, y)) == pytest.approx(_feature_space_cka(x, y), abs=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert float(linear_cka(x, 4 * x @ q + 2)) == pytest.approx(1.0, abs=1e-12)
    assert float(linear_cka(x, y)) == pytest.approx(float(linear_cka(y, x)), abs=1e-14)
    assert float(linear_cka(x.reshape(50, 2, 4), y)) == pytest.approx(float(linear_cka(x, y)), abs=1e-14)
    independent = float(linear_cka(rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3))))
    assert independent < 0.01


def test_cka_validation() -> None:
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(np.ones((4, 2)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(np.ones((4, 2)), np.arange(8.0).reshape(4, 2))


def test_scalar_h0_is_the_range(rng: np.random.Generator) -> None:
    v = rng.normal(size=12)
    d = scalar_h0(v)
    assert d.total_persistence == pytest.approx(float(v.max() - v.min()), abs=1e-12)
    np.testing.assert_allclose(d.deaths.numpy(), np.sort(np.diff(np.sort(v))), atol=1e-12)


class _Chain(nn.Module):
    """Layers whose representations are known: identical copies, or independent random maps."""

    def __init__(self, same: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(10, 10)
        self.b: nn.Module = nn.Identity() if same else nn.Sequential(nn.Linear(10, 10), nn.Tanh())
        self.c: nn.Module = nn.Identity() if same else nn.Sequential(nn.Linear(10, 10), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def test_identical_layers_collapse_and_distinct_layers_are_healthy() -> None:
    probe = torch.randn(128, 10, generator=torch.Generator().manual_seed(1))
    same = LayerPHMonitor(["a", "b", "c"]).update(_Chain(same=True), probe)
    assert same.state is LayerState.COLLAPSE and same.mean_death == pytest.approx(0.0, abs=1e-12)
    assert same.similarity is not None and torch.allclose(
        same.similarity, torch.ones(3, 3, dtype=torch.float64)
    )
    random = LayerPHMonitor(["a", "b", "c"]).update(_Chain(same=False), probe)
    assert random.state is LayerState.HEALTHY and random.mean_death is not None and random.mean_death > 0.015


def test_dead_layer_is_collapse_not_a_crash() -> None:
    first = nn.Linear(5, 5)
    net = nn.Sequential(first, nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        first.weight.zero_()
        first.bias.fill_(-1.0)  # every ReLU dead: layers "1" and "2" are constant
    step = LayerPHMonitor(["0", "1", "2"]).update(net, torch.randn(16, 5))
    assert step.state is LayerState.COLLAPSE and step.constant_layers == ("0", "1", "2")
    assert step.diagram is None and step.similarity is None


def test_states_follow_the_thresholds_and_the_model_is_untouched() -> None:
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    monitor = LayerPHMonitor(["0", "2"], LayerConfig(watch=0.5, collapse=0.25))
    step = monitor.update(net, torch.randn(64, 6))
    assert step.mean_death is not None
    expected = LayerConfig(watch=0.5, collapse=0.25).state(step.mean_death, step.min_rank)
    assert step.state is expected and step.step == 0
    assert net.training and all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks for m in net.modules())
    scalar = monitor.update_scalars({"0": 1.0, "2": 1.1})
    assert scalar.state is LayerState.COLLAPSE and scalar.mean_death == pytest.approx(0.1)
    assert [s.step for s in monitor.history] == [0, 1]


def test_layer_monitor_validation() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        LayerPHMonitor(["fc1"])
    with pytest.raises(ValueError, match="distinct"):
        LayerPHMonitor(["a", "a"])
    with pytest.raises(ValueError, match="must not exceed"):
        LayerConfig(watch=0.01, collapse=0.1)
    with pytest.raises(ValueError, match=r"rank_collapse \(2.0\) must not exceed"):
        LayerConfig(rank_watch=1.0, rank_collapse=2.0)
    with pytest.raises(ValueError, match="rank_watch must be a nonnegative number"):
        LayerConfig(rank_watch=-1.0)
    monitor = LayerPHMonitor(["0", "nope"])
    with pytest.raises(ValueError, match="valid layer names"):
        monitor.update(nn.Sequential(nn.Linear(2, 2)), torch.randn(4, 2))
    with pytest.raises(ValueError, match="lacks layers"):
        monitor.update_scalars({"0": 1.0})


def test_rank_reading_is_the_effective_rank_of_each_centred_layer() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    probe = torch.randn(40, 6, dtype=torch.float64)
    step = LayerPHMonitor(["0", "2", "4"]).update(net, probe)
    outputs = [net[0](probe), net[2](net[1](net[0](probe))), net(probe)]
    expected = [float(effective_rank((o - o.mean(0)).detach())) for o in outputs]
    assert step.effective_ranks == pytest.approx(expected, rel=1e-10)
    assert step.min_rank == pytest.approx(min(expected[:-1]), rel=1e-10)  # the output layer is not read


# Calibration on real data (the full measurement is examples/ph_layers.py, quoted in LayerConfig).


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    train, test = load("digits", "train"), load("digits", "test")
    return train.images, train.labels, test.images[:256]


def _trained(name: str, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor], seed: int = 0) -> nn.Module:
    x, y, _ = data
    net = build_model(name, (1, 8, 8), 10, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(10):
        for idx in torch.randperm(y.numel(), generator=gen).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net


@pytest.fixture(scope="module")
def healthy_mlp(digits: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> nn.Module:
    return _trained("mlp", digits)


@pytest.mark.parametrize("name", ["mlp", "purefield"])
def test_healthy_trained_nets_on_digits_read_healthy(
    name: str, digits: tuple[torch.Tensor, torch.Tensor, torch.Tensor], healthy_mlp: nn.Module
) -> None:
    net = healthy_mlp if name == "mlp" else _trained(name, digits, seed=1)
    step = LayerPHMonitor(monitored_layers(name)).update(net, digits[2])
    assert step.state is LayerState.HEALTHY, (step.mean_death, step.min_rank)


def _linear(net: nn.Module, name: str) -> nn.Linear:
    layer = net.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return layer


def _low_rank(layer: nn.Linear, rank: int) -> None:
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(layer.weight, full_matrices=False)
        layer.weight.copy_((u[:, :rank] * s[:rank]) @ vh[:rank])


@pytest.mark.parametrize(
    ("plant", "expected"),
    [
        ("identical", LayerState.COLLAPSE),
        ("rank-1 fc1", LayerState.COLLAPSE),
        ("rank-1 fc2", LayerState.COLLAPSE),
        ("rank-3 fc1", LayerState.WATCH),
        ("90% of ReLUs dead", LayerState.WATCH),
        ("98% of ReLUs dead", LayerState.COLLAPSE),
        ("all ReLUs dead", LayerState.COLLAPSE),
    ],
)
def test_planted_collapses_on_digits_are_flagged(
    plant: str,
    expected: LayerState,
    healthy_mlp: nn.Module,
    digits: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> None:
    net = copy.deepcopy(healthy_mlp)
    layers = monitored_layers("mlp")
    if plant == "identical":
        fc1 = _linear(net, "fc1")
        net = nn.Sequential(
            OrderedDict(flatten=nn.Flatten(), fc1=fc1, copy1=nn.Identity(), copy2=nn.Identity())
        )
        layers = ("fc1", "copy1", "copy2")
    elif plant.startswith("rank"):
        _low_rank(_linear(net, plant.split()[1]), int(plant[5]))
    elif "%" in plant:  # a share of fc1's and fc2's units never fires: bias far below any input
        share = int(plant.split("%")[0]) / 100
        gen = torch.Generator().manual_seed(0)
        for name in ("fc1", "fc2"):
            layer = _linear(net, name)
            dead = torch.randperm(layer.out_features, generator=gen)[: round(share * layer.out_features)]
            with torch.no_grad():
                layer.bias[dead] = -1e4
    else:
        with torch.no_grad():
            _linear(net, "fc1").bias.fill_(-1e4)
    step = LayerPHMonitor(layers).update(net, digits[2])
    assert step.state is expected, (step.mean_death, step.min_rank, step.max_inactive)


def test_dead_unit_reading_counts_never_positive_features_and_channels() -> None:
    net = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 4, 3, padding=1),
            act=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(4 * 5 * 5, 5),
            head=nn.Linear(5, 3),
        )
    )
    with torch.no_grad():
        net.conv.bias[:3] = -1e4  # channels 0-2 never positive at any position
        net.fc.bias[:2] = -1e4
    probe = torch.randn(16, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    step = LayerPHMonitor(["conv", "fc", "head"]).update(net, probe)
    assert step.inactive_fractions[:2] == (0.75, 0.4)
    assert step.max_inactive == 0.75 and step.state is LayerState.WATCH
    config = LayerConfig()
    assert config.state(0.1, 10.0, 0.2) is LayerState.HEALTHY
    assert config.state(0.1, 10.0, config.inactive_collapse) is LayerState.COLLAPSE
    with pytest.raises(ValueError, match="inactive_watch"):
        LayerConfig(inactive_watch=0.9, inactive_collapse=0.5)
