"""shiftlab.functional.transport against POT and geomloss, plus the facts OT guarantees."""

from __future__ import annotations

import doctest
import math
import sys
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from shiftlab.functional import displacement, sinkhorn, sliced, transport
from shiftlab.functional.displacement import multi_sinkhorn_displacement, sinkhorn_displacement
from shiftlab.functional.sinkhorn import entropic_plan, sinkhorn_divergence
from shiftlab.functional.sliced import sliced_wasserstein2
from shiftlab.functional.transport import barycentric_map, exact_plan, squared_distances, wasserstein2


@pytest.fixture(scope="module")
def ot() -> object:
    return pytest.importorskip("ot")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small problems: intra-op threads only add contention on a shared runner (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _clouds(seed: int, n: int = 40, m: int = 30, d: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = 1.5 * torch.randn(m, d, generator=g, dtype=torch.float64) + 1.0
    return x, y


@pytest.mark.parametrize("module", [transport, sinkhorn, displacement, sliced], ids=lambda m: m.__name__)
def test_docstring_examples(ot: object, module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_squared_distances_match_cdist() -> None:
    x, y = _clouds(0)
    assert torch.allclose(squared_distances(x, y), torch.cdist(x, y) ** 2, atol=1e-10)


# ---------------------------------------------------------------------------------------------- exact


def test_w2_is_sqrt_of_pot_emd2_with_weights(ot: object) -> None:
    x, y = _clouds(1)
    a = torch.rand(40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = a / a.sum()
    ref = ot.emd2(a.numpy(), np.full(30, 1 / 30), ot.dist(x.numpy(), y.numpy()))  # type: ignore[attr-defined]
    assert float(wasserstein2(x, y, a=a)) == pytest.approx(math.sqrt(ref), rel=1e-10)


def test_exact_plan_matches_pot_and_has_the_marginals(ot: object) -> None:
    x, y = _clouds(3)
    plan = exact_plan(x, y)
    ref = ot.emd(np.full(40, 1 / 40), np.full(30, 1 / 30), ot.dist(x.numpy(), y.numpy()))  # type: ignore[attr-defined]
    cost = squared_distances(x, y)
    assert float((plan * cost).sum()) == pytest.approx(float((torch.from_numpy(ref) * cost).sum()), rel=1e-10)
    assert torch.allclose(plan.sum(1), torch.full((40,), 1 / 40, dtype=torch.float64))
    assert torch.allclose(plan.sum(0), torch.full((30,), 1 / 30, dtype=torch.float64))


def test_exact_plan_between_equal_uniform_clouds_is_a_permutation(ot: object) -> None:
    x, y = _clouds(4, n=25, m=25)
    plan = exact_plan(x, y) * 25
    assert torch.allclose(plan.sum(0), torch.ones(25, dtype=torch.float64))
    assert bool(((plan.abs() < 1e-12) | ((plan - 1).abs() < 1e-12)).all())


@given(
    shift=st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=3),
    seed=st.integers(0, 10_000),
)
def test_w2_of_a_translation_is_its_length(shift: list[float], seed: int) -> None:
    pytest.importorskip("ot")
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c = torch.tensor(shift, dtype=torch.float64)
    assert float(wasserstein2(x, x + c)) == pytest.approx(float(c.norm()), abs=1e-6)


@given(seed=st.integers(0, 10_000))
def test_w2_is_symmetric_and_satisfies_the_triangle_inequality(seed: int) -> None:
    pytest.importorskip("ot")
    g = torch.Generator().manual_seed(seed)
    x, y, z = (torch.randn(15, 2, generator=g, dtype=torch.float64) * s for s in (1.0, 2.0, 0.5))
    assert float(wasserstein2(x, y)) == pytest.approx(float(wasserstein2(y, x)), rel=1e-9)
    assert float(wasserstein2(x, z)) <= float(wasserstein2(x, y)) + float(wasserstein2(y, z)) + 1e-9


def test_missing_pot_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ot", None)
    with pytest.raises(ImportError, match=r"pip install 'shiftlab\[ot\]'"):
        wasserstein2([[0.0]], [[1.0]])


def test_missing_geomloss_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "geomloss", None)
    with pytest.raises(ImportError, match=r"pip install 'shiftlab\[ot\]'"):
        sinkhorn_divergence([[0.0]], [[1.0]], backend="geomloss")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: wasserstein2([[0.0, 1.0]], [[0.0]]), "same dimension"),
        (lambda: wasserstein2([[float("nan")]], [[0.0]]), "non-finite"),
        (lambda: wasserstein2([[0.0], [1.0]], [[0.0]], a=[0.6, 0.6]), "sum to 1"),
        (lambda: wasserstein2([[0.0], [1.0]], [[0.0]], a=[1.5, -0.5]), "non-negative"),
        (lambda: exact_plan([[0.0]], [[0.0]], a=[1.0, 0.0]), "one weight per point"),
        (lambda: entropic_plan([[0.0]], [[1.0]], blur=0.0), "blur"),
        (lambda: entropic_plan([[0.0]], [[1.0]], scaling=1.0), "scaling"),
        (lambda: sinkhorn_divergence([[0.0]], [[1.0]], backend="keops"), "backend"),  # type: ignore[arg-type]
        (lambda: barycentric_map([[0.0, 0.0]], [[1.0], [2.0]]), "carry no mass"),
        (
            lambda: sliced_wasserstein2([[0.0, 0.0]], [[1.0, 0.0]], projections=[[0.0], [0.0]]),
            "zero direction",
        ),
        (lambda: multi_sinkhorn_displacement([[0.0]], [[[1.0]]], weights=[0.5]), "summing to 1"),
    ],
)
def test_bad_input_is_rejected(ot: object, call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


# -------------------------------------------------------------------------------------------- entropic


def test_entropic_plan_matches_pot_sinkhorn_log(ot: object) -> None:
    x, y = _clouds(5)
    blur = 0.4
    res = entropic_plan(x, y, blur=blur, tol=1e-10, max_iter=20_000)
    ref = ot.sinkhorn(  # type: ignore[attr-defined]
        np.full(40, 1 / 40),
        np.full(30, 1 / 30),
        ot.dist(x.numpy(), y.numpy()),
        2 * blur**2,  # type: ignore[attr-defined]
        method="sinkhorn_log",
        stopThr=1e-13,
        numItermax=100_000,
    )
    assert np.abs(res.plan.numpy() - ref).max() < 1e-8
    assert res.marginal_error <= 1e-10


def test_entropic_value_equals_the_primal_objective() -> None:
    x, y = _clouds(6)
    blur = 0.3
    res = entropic_plan(x, y, blur=blur, tol=1e-11, max_iter=20_000)
    a, b = torch.full((40,), 1 / 40, dtype=torch.float64), torch.full((30,), 1 / 30, dtype=torch.float64)
    p = res.plan
    primal = (p * squared_distances(x, y)).sum() + 2 * blur**2 * (
        p * (p / (a[:, None] * b[None, :])).log()
    ).sum()
    assert float(res.value) == pytest.approx(float(primal), rel=1e-8)


def test_strict_sinkhorn_raises_and_best_effort_reports() -> None:
    x, y = _clouds(7)
    with pytest.raises(RuntimeError, match="did not converge"):
        entropic_plan(x, y, blur=0.05, max_iter=3, tol=1e-9)
    res = entropic_plan(x, y, blur=0.05, max_iter=3, tol=1e-9, strict=False)
    assert res.n_iter == 3 and res.marginal_error > 1e-9
    assert torch.allclose(res.plan.sum(1), torch.full((40,), 1 / 40, dtype=torch.float64))  # rows exact


def test_sinkhorn_divergence_properties() -> None:
    x, y = _clouds(8)
    # a cloud against itself is the slow case for plain Sinkhorn (near-diagonal plan): a wide blur converges
    kw = {"blur": 1.0, "tol": 1e-10, "max_iter": 50_000}
    assert float(sinkhorn_divergence(x, x, **kw)) == pytest.approx(0.0, abs=1e-9)  # type: ignore[arg-type]
    s_xy, s_yx = float(sinkhorn_divergence(x, y, **kw)), float(sinkhorn_divergence(y, x, **kw))  # type: ignore[arg-type]
    assert s_xy > 0 and s_xy == pytest.approx(s_yx, rel=1e-8)


def test_sinkhorn_divergence_approaches_w2_squared(ot: object) -> None:
    x, y = _clouds(9, n=12, m=12)
    w2sq = float(wasserstein2(x, y)) ** 2
    s = float(sinkhorn_divergence(x, y, blur=0.02, tol=1e-6, max_iter=100_000))
    assert s == pytest.approx(w2sq, rel=0.02)


def test_sinkhorn_divergence_is_twice_geomloss() -> None:
    geomloss = pytest.importorskip("geomloss")
    x, y = _clouds(10)
    ref = 2 * float(geomloss.SamplesLoss("sinkhorn", p=2, blur=0.5, scaling=0.99)(x, y))
    ours = float(sinkhorn_divergence(x, y, blur=0.5, tol=1e-9, max_iter=20_000))
    assert ours == pytest.approx(ref, rel=2e-3)
    assert float(sinkhorn_divergence(x, y, blur=0.5, scaling=0.99, backend="geomloss")) == pytest.approx(
        ref, rel=1e-9
    )


def test_sinkhorn_displacement_is_minus_the_scaled_gradient() -> None:
    """Central finite differences of S_eps (converged to 1e-12) give -2 a_i v_i."""
    x, y = _clouds(11, n=6, m=5)
    blur = 0.5
    v = sinkhorn_displacement(x, y, blur=blur, tol=1e-13, max_iter=100_000)
    h = 1e-5
    for i, k in ((0, 0), (3, 1), (5, 0)):
        xp, xm = x.clone(), x.clone()
        xp[i, k] += h
        xm[i, k] -= h
        sp = float(sinkhorn_divergence(xp, y, blur=blur, tol=1e-13, max_iter=100_000))
        sm = float(sinkhorn_divergence(xm, y, blur=blur, tol=1e-13, max_iter=100_000))
        assert (sp - sm) / (2 * h) == pytest.approx(-2 / 6 * float(v[i, k]), rel=1e-4, abs=1e-7)


def test_sinkhorn_displacement_matches_geomloss_autograd() -> None:
    geomloss = pytest.importorskip("geomloss")
    x, y = _clouds(12)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        2 * geomloss.SamplesLoss("sinkhorn", p=2, blur=0.5, scaling=0.99)(xr, y), xr
    )
    v = sinkhorn_displacement(x, y, blur=0.5, tol=1e-9, max_iter=20_000)
    ref = -grad / (2 / 40)
    assert float((v - ref).norm() / ref.norm()) < 1e-2  # geomloss anneals without converging: 0.99 scaling


def test_multi_displacement_is_the_weighted_combination() -> None:
    x, y = _clouds(13)
    z = y + torch.tensor([2.0, -1.0], dtype=torch.float64)
    kw = {"blur": 0.4, "tol": 1e-10, "max_iter": 20_000}
    single = sinkhorn_displacement(x, y, **kw)  # type: ignore[arg-type]
    assert torch.allclose(multi_sinkhorn_displacement(x, [y], **kw), single, atol=1e-10)  # type: ignore[arg-type]
    both = multi_sinkhorn_displacement(x, [y, z], weights=[0.25, 0.75], **kw)  # type: ignore[arg-type]
    other = sinkhorn_displacement(x, z, **kw)  # type: ignore[arg-type]
    assert torch.allclose(both, 0.25 * single + 0.75 * other, atol=1e-8)


def test_small_blur_displacement_tends_to_the_exact_map(ot: object) -> None:
    x, y = _clouds(14, n=20, m=20)
    exact = barycentric_map(exact_plan(x, y), y) - x
    v = sinkhorn_displacement(x, y, blur=0.03, tol=1e-4, max_iter=200_000)
    gap = (v - exact).norm(dim=1)
    # near-ties of the assignment stay split at any positive blur; everywhere else the maps agree
    assert float((gap < 1e-3).double().mean()) >= 0.75
    assert float(gap.mean()) < 0.03


# ---------------------------------------------------------------------------------------- sliced, maps


def test_sliced_w2_matches_pot_for_the_same_directions(ot: object) -> None:
    x, y = _clouds(15, n=40, m=27, d=3)
    theta = torch.randn(3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theta = theta / theta.norm(dim=0)
    ref = ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), projections=theta.numpy(), p=2)  # type: ignore[attr-defined]
    assert float(sliced_wasserstein2(x, y, projections=theta)) == pytest.approx(float(ref), rel=1e-7)


def test_sliced_w2_is_below_w2_and_seeded(ot: object) -> None:
    x, y = _clouds(16)
    sw = sliced_wasserstein2(x, y, n_projections=64, seed=3)
    assert float(sw) <= float(wasserstein2(x, y)) + 1e-12
    assert float(sw) == float(sliced_wasserstein2(x, y, n_projections=64, seed=3))


def test_sliced_w2_gradient_reaches_the_points() -> None:
    x, y = _clouds(17)
    xr = x.clone().requires_grad_(True)
    sliced_wasserstein2(xr, y, n_projections=8).backward()
    assert xr.grad is not None and float(xr.grad.abs().sum()) > 0


def test_barycentric_map_of_an_exact_plan_moves_the_mean_to_the_target_mean(ot: object) -> None:
    x, y = _clouds(18)
    t = barycentric_map(exact_plan(x, y), y)
    assert torch.allclose(t.mean(0), y.mean(0), atol=1e-10)


def test_squared_distances_gradcheck() -> None:
    x, y = _clouds(19, n=4, m=3)
    assert torch.autograd.gradcheck(
        squared_distances, (x.clone().requires_grad_(True), y.clone().requires_grad_(True))
    )


def test_entropic_plan_runs_in_float32_on_the_input_device() -> None:
    x, y = _clouds(20)
    res = entropic_plan(x.float(), y.float(), blur=0.4)
    assert res.plan.dtype == torch.float32
    assert float(res.plan.sum()) == pytest.approx(1.0, abs=1e-5)
