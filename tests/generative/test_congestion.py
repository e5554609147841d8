"""Congested-transport constants (checked by brute force), interpolates, capacity and the speed cap."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftlab.generative import (
    cap_speed,
    congestion_cost,
    congestion_flow,
    interpolation_points,
    relative_capacity,
)


@settings(max_examples=30, deadline=None)
@given(z=st.floats(0.0, 20.0), sigma=st.floats(0.05, 5.0), lam=st.floats(0.1, 20.0))
def test_cost_is_the_convex_conjugate_of_the_one_sided_penalty(z: float, sigma: float, lam: float) -> None:
    """H(z) = sup_r z r - lam sigma (r - 1)_+^2 over r >= 0, maximised on a fine grid."""
    r_star = 1.0 + z / (2 * lam * sigma)
    r = torch.linspace(0.0, 2 * r_star + 1.0, 400_001, dtype=torch.float64)
    brute = float((z * r - lam * sigma * (r - 1).clamp_min(0) ** 2).max())
    h = float(
        congestion_cost(
            torch.tensor([z], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64), lam
        )
    )
    assert h == pytest.approx(brute, rel=1e-6, abs=1e-9)


def test_the_half_weight_constant_would_fail_the_conjugate_check() -> None:
    """z + z^2 / (2 lam sigma) is the conjugate of (lam/2) sigma (r-1)_+^2, not of lam sigma (r-1)_+^2."""
    z, sigma, lam = 3.0, 1.0, 1.0
    r = torch.linspace(0.0, 10.0, 200_001, dtype=torch.float64)
    brute = float((z * r - lam * sigma * (r - 1).clamp_min(0) ** 2).max())
    assert brute == pytest.approx(z + z * z / (4 * lam * sigma), rel=1e-6)
    assert abs(brute - (z + z * z / (2 * lam * sigma))) > 1.0


def test_flow_is_the_gradient_of_the_penalty() -> None:
    g = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    sigma = torch.rand(30, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    p = g.clone().requires_grad_(True)
    penalty = (0.7 * sigma * (p.norm(dim=1) - 1).clamp_min(0) ** 2).sum()
    (grad,) = torch.autograd.grad(penalty, p)
    assert torch.allclose(congestion_flow(g, sigma, 0.7), grad, atol=1e-12)


def test_flow_vanishes_inside_the_unit_ball_and_points_along_the_gradient() -> None:
    g = torch.tensor([[0.3, 0.4], [3.0, 4.0]], dtype=torch.float64)
    w = congestion_flow(g, torch.ones(2, dtype=torch.float64), lam=1.0)
    assert torch.equal(w[0], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(w[1], 2 * 1.0 * (5 - 1) * g[1] / 5)


def test_cost_gradcheck() -> None:
    z = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: congestion_cost(a, b, 2.0), (z, s))


def test_bad_congestion_input() -> None:
    with pytest.raises(ValueError, match="lam"):
        congestion_cost(torch.ones(1), torch.ones(1), 0.0)
    with pytest.raises(ValueError, match="sigma must be positive"):
        congestion_cost(torch.ones(1), torch.zeros(1), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        congestion_cost(-torch.ones(1), torch.ones(1), 1.0)
    with pytest.raises(ValueError, match="one value per gradient"):
        congestion_flow(torch.ones(3, 2), torch.ones(2), 1.0)


def test_interpolates_lie_on_segments_between_pairs() -> None:
    x = torch.zeros(50, 2)
    y = torch.ones(50, 2) * torch.arange(50).float()[:, None]
    pts = interpolation_points(x, y, torch.Generator().manual_seed(0))
    # every interpolate is t * 0 + (1 - t) * (k, k) for some k: on the diagonal, within the hull
    assert torch.allclose(pts[:, 0], pts[:, 1])
    assert bool((pts >= 0).all()) and bool((pts <= 49).all())


def test_relative_capacity_has_mean_one_and_is_larger_on_the_corridor() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g) * 0.2
    y = torch.randn(200, 2, generator=g) * 0.2 + torch.tensor([4.0, 0.0])
    interp = interpolation_points(x, y, g)
    probe = torch.tensor([[2.0, 0.0], [2.0, 3.0]])
    cap = relative_capacity(torch.cat([x, probe]), interp)
    assert float(cap.mean()) == pytest.approx(1.0, rel=1e-6)
    assert float(cap[-2]) > 10 * float(cap[-1])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), kappa=st.floats(0.01, 3.0))
def test_cap_bounds_every_step_and_keeps_directions(seed: int, kappa: float) -> None:
    v = torch.randn(40, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    caps = torch.rand(40, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) * kappa
    out = cap_speed(v, caps)
    assert bool((out.norm(dim=1) <= caps + 1e-12).all())
    cos = (out * v).sum(1) / (out.norm(dim=1) * v.norm(dim=1)).clamp_min(1e-300)
    assert bool(((cos > 1 - 1e-9) | (out.norm(dim=1) == 0)).all())
    short = v.norm(dim=1) <= caps
    assert torch.equal(out[short], v[short])


def test_cap_rejects_bad_caps() -> None:
    with pytest.raises(ValueError, match="finite and non-negative"):
        cap_speed(torch.ones(2, 2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="scalar or have shape"):
        cap_speed(torch.ones(2, 2), torch.ones(3))
