"""The least-squares pullback against an explicit-Jacobian ridge solve, and the trust regions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from shiftlab.generative import ConvGenerator, Generator, least_squares_step, trust_region
from shiftlab.generative._pullback import layer_norms


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _explicit_jacobian(model: nn.Module, params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    names = list(params)

    def flat(*tensors: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, tensors, strict=True)), (z,)).reshape(-1)

    jac = jacrev(flat, argnums=tuple(range(len(names))))(*params.values())
    return torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1)


def test_cgls_converges_to_the_ridge_solution_of_the_explicit_jacobian() -> None:
    g = torch.Generator().manual_seed(0)
    model = Generator(latent_dim=2, data_dim=2, hidden=(5,)).double()
    params = _params(model)
    z = torch.randn(30, 2, dtype=torch.float64, generator=g)
    b = torch.randn(30, 2, dtype=torch.float64, generator=g) * 0.1
    rho = 1e-2
    n_par = sum(v.numel() for v in params.values())
    step = least_squares_step(model, params, z, b, iterations=3 * n_par, damping=rho)
    jac = _explicit_jacobian(model, params, z) / 30**0.5
    rhs = b.reshape(-1) / 30**0.5
    ref = torch.linalg.solve(jac.T @ jac + rho * torch.eye(n_par, dtype=torch.float64), jac.T @ rhs)
    ours = torch.cat([step.delta[k].reshape(-1) for k in params])
    assert torch.allclose(ours, ref, atol=1e-7)


def test_planted_representable_step_is_reproduced() -> None:
    """A translation of every output is exactly representable (last bias): the residual must vanish."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Generator(hidden=(32, 32))
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    b = torch.tensor([0.3, -0.2]).expand(256, 2)
    step = least_squares_step(model, _params(model), z, b, iterations=10, damping=0.0)
    assert step.residual < 0.05


def test_least_squares_beats_the_first_order_step() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Generator(hidden=(32, 32))
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    x = model(z).detach()
    b = 0.2 * torch.stack([-x[:, 1], x[:, 0]], dim=1)  # a rotation field
    ls = least_squares_step(model, _params(model), z, b, iterations=15, damping=0.0)
    fo = least_squares_step(model, _params(model), z, b, iterations=15, damping=0.0, first_order=True)
    assert fo.iterations == 1
    assert ls.residual < fo.residual < 1.0


def test_damping_shrinks_the_update() -> None:
    """Holds at every initialisation (seed 8 once made CG diverge after converging, before the stop rule)."""
    with torch.random.fork_rng():
        torch.manual_seed(8)
        model = Generator(hidden=(16,))
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(2))
    b = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    norms = []
    for rho in (0.0, 1.0, 100.0):
        d = least_squares_step(model, _params(model), z, b, iterations=20, damping=rho).delta
        norms.append(sum(float(v.norm() ** 2) for v in d.values()))
    assert norms[0] > norms[1] > norms[2]
    # a converged solve stays put however many iterations are allowed (no drift past round-off)
    short = least_squares_step(model, _params(model), z, b, iterations=5, damping=100.0)
    long = least_squares_step(model, _params(model), z, b, iterations=200, damping=100.0)
    assert long.iterations < 200
    assert all(torch.allclose(short.delta[k], long.delta[k], rtol=1e-3, atol=1e-9) for k in short.delta)


def test_zero_request_gives_zero_update() -> None:
    model = Generator(hidden=(8,))
    step = least_squares_step(
        model, _params(model), torch.randn(10, 2), torch.zeros(10, 2), iterations=5, damping=0.0
    )
    assert step.residual == 0.0 and all(float(v.abs().sum()) == 0 for v in step.delta.values())


def test_pullback_runs_through_a_conv_generator() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ConvGenerator(latent_dim=8, resolution=8, channels=8)
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(4))
    b = 0.05 * torch.ones(64, 1, 8, 8)
    step = least_squares_step(model, _params(model), z, b, iterations=10, damping=0.0)
    assert step.residual < 0.5
    assert any(float(v.abs().sum()) > 0 for v in step.delta.values())


def test_relative_trust_region_bounds_the_norm() -> None:
    params = {"a.weight": torch.ones(4), "b.weight": torch.ones(4)}
    delta = {"a.weight": torch.ones(4) * 10, "b.weight": torch.zeros(4)}
    out, factor = trust_region(delta, params, "relative", 0.1)
    total = sum(float(v.norm() ** 2) for v in out.values()) ** 0.5
    assert total == pytest.approx(0.1 * 8**0.5)
    assert factor == pytest.approx(0.1 * 8**0.5 / 20)


def test_per_layer_trust_region_bounds_each_layer() -> None:
    params = {"a.weight": torch.ones(4), "a.bias": torch.ones(1), "b.weight": torch.ones(4) * 3}
    delta = {"a.weight": torch.ones(4), "a.bias": torch.ones(1), "b.weight": torch.ones(4) * 0.01}
    out, _ = trust_region(delta, params, "per-layer", 0.2)
    layers, p_layers = layer_norms(out), layer_norms(params)
    assert layers["a"] == pytest.approx(0.2 * p_layers["a"])
    assert layers["b"] == pytest.approx(0.02)  # inside its region: untouched
    with pytest.raises(ValueError, match="trust region mode"):
        trust_region(delta, params, "global", 0.2)
