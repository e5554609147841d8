"""linear_cka, scalar_h0 and LayerPHMonitor states on networks with known layer geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shiftlab.topology import LayerConfig, LayerPHMonitor, LayerState, linear_cka, scalar_h0


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
    net = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(-1.0)  # every ReLU dead: layers "1" and "2" are constant
    step = LayerPHMonitor(["0", "1", "2"]).update(net, torch.randn(16, 5))
    assert step.state is LayerState.COLLAPSE and step.constant_layers == ("0", "1", "2")
    assert step.diagram is None and step.similarity is None


def test_states_follow_the_thresholds_and_the_model_is_untouched() -> None:
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    monitor = LayerPHMonitor(["0", "2"], LayerConfig(watch=0.5, collapse=0.25))
    step = monitor.update(net, torch.randn(64, 6))
    assert step.mean_death is not None
    expected = LayerConfig(watch=0.5, collapse=0.25).state(step.mean_death)
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
    monitor = LayerPHMonitor(["0", "nope"])
    with pytest.raises(ValueError, match="valid layer names"):
        monitor.update(nn.Sequential(nn.Linear(2, 2)), torch.randn(4, 2))
    with pytest.raises(ValueError, match="lacks layers"):
        monitor.update_scalars({"0": 1.0})
