import pytest
import torch
from torch import nn

from shiftlab.functional.jacobian import fd_energy, jvp_energy


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _explicit_energy(
    net: nn.Module, x: torch.Tensor, tangents: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    out = []
    for b in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(net, x[b])  # (3, 5)
        out.append(sum(w * (jac @ tangents[k, b]).pow(2).sum() for k, w in enumerate(weights)))
    return torch.stack(out)


def _forward(net: nn.Module, x: torch.Tensor):
    return lambda delta: (net(x + delta), net(x + delta))


@pytest.mark.parametrize("vectorize", [True, False])
def test_jvp_and_fd_match_the_explicit_jacobian(vectorize: bool) -> None:
    net = _net()
    x = torch.randn(6, 5, dtype=torch.float64)
    tangents = torch.randn(3, 6, 5, dtype=torch.float64)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    expected = _explicit_energy(net, x, tangents, weights)
    exact = jvp_energy(_forward(net, x), tangents, weights, vectorize=vectorize)
    torch.testing.assert_close(exact.energy, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(exact.output, net(x))
    approx = fd_energy(_forward(net, x), tangents, weights, step=1e-6, vectorize=vectorize)
    torch.testing.assert_close(approx.energy, expected, rtol=1e-4, atol=1e-8)


def test_energy_gradcheck_with_respect_to_weights() -> None:
    net = _net()
    x = torch.randn(4, 5, dtype=torch.float64)
    tangents = torch.randn(2, 4, 5, dtype=torch.float64)
    weights = torch.ones(2, dtype=torch.float64)
    w0 = net[0].weight.detach().clone().requires_grad_(True)

    def energy(w: torch.Tensor) -> torch.Tensor:
        def forward(delta: torch.Tensor) -> torch.Tensor:
            h = net[2](torch.tanh((x + delta) @ w.T + net[0].bias))
            return h, h

        return jvp_energy(forward, tangents, weights).energy

    assert torch.autograd.gradcheck(energy, (w0,))


def test_bad_blocks_are_rejected() -> None:
    net = _net()
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="one per tangent block"):
        jvp_energy(_forward(net, x), torch.randn(2, 2, 5, dtype=torch.float64), torch.ones(3))
    with pytest.raises(ValueError, match="finite"):
        jvp_energy(_forward(net, x), torch.full((1, 2, 5), float("nan"), dtype=torch.float64), torch.ones(1))
    with pytest.raises(ValueError, match="step"):
        fd_energy(_forward(net, x), torch.randn(1, 2, 5, dtype=torch.float64), torch.ones(1), step=0.0)


@pytest.mark.parametrize("vectorize", [True, False])
def test_a_function_independent_of_the_perturbation_has_zero_energy(vectorize: bool) -> None:
    def constant(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.ones(delta.shape[0], 2, dtype=torch.float64)
        return out, out

    tangents = torch.randn(2, 3, 5, dtype=torch.float64)
    energy = jvp_energy(constant, tangents, torch.ones(2, dtype=torch.float64), vectorize=vectorize).energy
    torch.testing.assert_close(energy, torch.zeros(3, dtype=torch.float64))
