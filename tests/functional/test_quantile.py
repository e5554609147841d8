"""shiftlab.functional.quantile: the quantile map, its targets, knots and backward surrogates."""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shiftlab.functional import _quantile_curves, _rank_map, quantile
from shiftlab.functional._rank_map import PARALLEL_MIN_SIZE, _argsort, _radix_argsort
from shiftlab.functional.quantile import (
    GRAD_NAMES,
    empirical_quantiles,
    group_map,
    interp_map,
    knot_levels,
    quantile_map,
    target_quantiles,
)

SCIPY = {
    "gaussian": scipy.stats.norm(),
    "cauchy": scipy.stats.cauchy(),
    "uniform": scipy.stats.uniform(-math.sqrt(3), 2 * math.sqrt(3)),
}


@pytest.mark.parametrize("module", [quantile, _quantile_curves], ids=lambda m: m.__name__)
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0


# ------------------------------------------------------------------------------------------ the forward map


@pytest.mark.parametrize("name", ["gaussian", "uniform", "cauchy"])
def test_output_matches_target_in_ks_distance(name: str) -> None:
    x = torch.distributions.Gamma(2.0, 1.0).sample((4, 3, 500))
    y = group_map(x, 3, name)
    n = 500
    for row in y.reshape(12, n):
        ks = scipy.stats.kstest(row.double().numpy(), SCIPY[name].cdf).statistic
        assert ks <= 1 / n + 1e-6


@given(arrays(np.float64, st.integers(2, 60), elements=st.integers(-(10**6), 10**6).map(float), unique=True))
def test_ks_bound_and_monotone_invariance_property(values: np.ndarray) -> None:
    x = torch.from_numpy(values)
    y = quantile_map(x)
    assert scipy.stats.kstest(y.numpy(), "norm").statistic <= 1 / len(values) + 1e-9
    torch.testing.assert_close(quantile_map(torch.atan(x / 1e3) * 7 + 3), y)  # strictly increasing


def test_ties_get_mid_ranks_like_scipy() -> None:
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0, 1.0, -0.0, 0.0]])
    ranks = scipy.stats.rankdata(x.numpy()[0], method="average")
    expected = scipy.stats.norm.ppf((ranks - 0.5) / 8)
    torch.testing.assert_close(quantile_map(x)[0].double(), torch.from_numpy(expected), atol=1e-6, rtol=0)
    y = quantile_map(x)[0]
    assert y[0] == y[2] == y[4] and y[1] == y[5] and y[6] == y[7]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_sort_equals_torch_sort(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 777, generator=g, dtype=dtype) * torch.logspace(-30, 30, 777, dtype=dtype)
    x[:, :50] = 0.0
    x[:, 50:80] = -0.0
    x[0, 5] = 1e-42 if dtype == torch.float32 else 1e-310  # subnormal
    want = torch.sort(x, dim=-1, stable=True).values
    if dtype == torch.float32:
        assert torch.equal(x.gather(-1, _radix_argsort(x)), want)
    levels = (torch.from_numpy(scipy.stats.rankdata(x.numpy(), axis=-1)).double() - 0.5) / 777
    torch.testing.assert_close(quantile_map(x).double(), torch.special.ndtri(levels), atol=2e-6, rtol=0)


def test_threaded_argsort_equals_one_thread() -> None:
    x = torch.randn(37, 1001, generator=torch.Generator().manual_seed(3))
    x[:, ::7] = 0.5  # ties: the chunks must keep the stable order too
    assert x.numel() >= PARALLEL_MIN_SIZE
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # three uneven chunks of rows
        got = _argsort(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, _radix_argsort(x))
    assert torch.equal(got, torch.sort(x, dim=-1, stable=True).indices)


def test_cached_tables_built_under_inference_mode_can_be_saved_for_backward() -> None:
    quantile._named_tables.cache_clear()
    x = torch.randn(4, 37)
    with torch.inference_mode():
        quantile_map(x, grad="ste")
    table, slope = quantile._named_tables("gaussian", 37, "ste", x.device, x.dtype)
    assert slope is not None and not table.is_inference() and not slope.is_inference()
    assert not table.requires_grad and not slope.requires_grad


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_input_is_rejected(bad: float) -> None:
    x = torch.randn(2, 4, 3)
    x[1, 2, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        group_map(x, 2)
    with pytest.raises(ValueError, match="non-finite"):
        group_map(x, 2, knots=torch.sort(torch.randn(2, 8)).values)


def test_half_precision_and_channels_last() -> None:
    x = torch.randn(2, 8, 5, 5)
    ref = group_map(x, 4)
    half = group_map(x.half(), 4)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), group_map(x.half().float(), 4), atol=2e-3, rtol=1e-3)
    cl = group_map(x.to(memory_format=torch.channels_last), 4)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, ref)


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 7), (2, 4, 3, 5), (2, 4, 2, 3, 3)])
def test_blend_zero_is_group_norm(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    w, b = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    want = torch.nn.functional.group_norm(x, 2, w, b, eps=1e-5)
    torch.testing.assert_close(group_map(x, 2, "gaussian", w, b, blend=0.0), want)
    half = group_map(x, 2, "gaussian", w, b, blend=0.5)
    torch.testing.assert_close(half, 0.5 * want + 0.5 * group_map(x, 2, "gaussian", w, b))


def test_tie_noise_is_seeded_and_breaks_ties() -> None:
    x = torch.zeros(1, 2, 10)
    a = group_map(x, 1, tie_noise=1e-3, generator=torch.Generator().manual_seed(1))
    b = group_map(x, 1, tie_noise=1e-3, generator=torch.Generator().manual_seed(1))
    c = group_map(x, 1, tie_noise=1e-3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.unique().numel() == 20
    assert group_map(x, 1).unique().numel() == 1


def test_bad_arguments_name_the_problem() -> None:
    x = torch.randn(2, 6, 4)
    with pytest.raises(ValueError, match="not divisible"):
        group_map(x, 4)
    with pytest.raises(ValueError, match="valid names: uniform, gaussian, cauchy"):
        group_map(x, 3, "laplace")
    with pytest.raises(ValueError, match="valid: ecdf, ste, softrank"):
        group_map(x, 3, grad="exact")
    with pytest.raises(ValueError, match="weight must have shape"):
        group_map(x, 3, weight=torch.ones(3))
    with pytest.raises(ValueError, match="blend"):
        group_map(x, 3, blend=1.5)
    with pytest.raises(ValueError, match=r"torch\.Generator"):
        group_map(x, 3, tie_noise=0.1)
    with pytest.raises(ValueError, match=r"\(N, C, \*\)"):
        group_map(torch.randn(5), 1)
    with pytest.raises(ValueError, match="knots must have shape"):
        group_map(x, 3, knots=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="nondecreasing"):
        group_map(x, 3, knots=torch.randn(3, 5).sort(descending=True).values)


# ------------------------------------------------------------------------------------------------ targets


@pytest.mark.parametrize("name", ["gaussian", "uniform", "cauchy"])
def test_named_targets_match_scipy(name: str) -> None:
    u = np.array([0.001, 0.2, 0.5, 0.77, 0.999])
    torch.testing.assert_close(target_quantiles(name, u), torch.from_numpy(SCIPY[name].ppf(u)))


def test_distribution_and_tensor_targets() -> None:
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    dist = torch.distributions.Normal(torch.tensor(1.0, dtype=torch.float64), torch.tensor(2.0))
    torch.testing.assert_close(target_quantiles(dist, u), torch.from_numpy(scipy.stats.norm(1, 2).ppf(u)))
    q = torch.tensor([0.0, 1.0, 4.0])  # at levels 1/6, 1/2, 5/6
    got = target_quantiles(q, [1 / 6, 1 / 3, 1 / 2, 0.95, 0.05])
    torch.testing.assert_close(got, torch.tensor([0.0, 0.5, 1.0, 4 + 3 * (0.95 - 5 / 6) * 3, -0.35]))


def test_bad_targets() -> None:
    with pytest.raises(ValueError, match="nondecreasing"):
        target_quantiles(torch.tensor([1.0, 0.0]), [0.5])
    with pytest.raises(ValueError, match="scalar"):
        target_quantiles(torch.distributions.Normal(torch.zeros(2), 1.0), [0.5])
    with pytest.raises(TypeError, match="no icdf"):
        target_quantiles(torch.distributions.Gamma(2.0, 1.0), [0.5])
    with pytest.raises(TypeError, match="target must be"):
        target_quantiles(3.0, [0.5])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strictly inside"):
        target_quantiles("gaussian", [0.0, 0.5])


def test_learnable_tensor_target_gets_the_autograd_gradient() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 11, generator=g, dtype=torch.float64)
    x[0, :4] = 0.5  # ties
    q = torch.tensor([-2.0, -0.3, 0.1, 1.5, 2.5], dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 11, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad((quantile_map(x, q) * w).sum(), q)
    ranks = torch.from_numpy(scipy.stats.rankdata(x.numpy(), axis=-1))
    (want,) = torch.autograd.grad((target_quantiles(q, (ranks - 0.5) / 11) * w).sum(), q)
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------- knots and interp


def test_empirical_quantiles_match_numpy_hazen() -> None:
    x = np.random.default_rng(0).normal(size=(4, 37))
    p = np.array([0.0, 0.01, 0.3, 0.5, 0.99, 1.0])
    want = np.quantile(x, p, axis=-1, method="hazen").T
    torch.testing.assert_close(empirical_quantiles(x, p), torch.from_numpy(want))


def test_interp_map_matches_numpy_inside_and_extends_linearly() -> None:
    kx = torch.tensor([[0.0, 1.0, 3.0]], dtype=torch.float64)
    ky = torch.tensor([[-1.0, 0.0, 4.0]], dtype=torch.float64)
    x = torch.tensor([[0.0, 0.25, 2.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(interp_map(x, kx, ky)[0], torch.from_numpy(np.interp(x[0], kx[0], ky[0])))
    out = interp_map(torch.tensor([[-1.0, 5.0]], dtype=torch.float64), kx, ky)
    torch.testing.assert_close(out, torch.tensor([[-2.0, 8.0]], dtype=torch.float64))


def test_interp_map_tied_knots_give_the_mean_of_both_limits() -> None:
    kx = torch.tensor([[0.0, 1.0, 1.0, 1.0, 2.0]])
    ky = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    assert interp_map(torch.tensor([[1.0]]), kx, ky).item() == 2.0
    assert interp_map(torch.tensor([[0.5, 1.5]]), kx, ky).tolist() == [[0.5, 3.5]]


def _interp_reference(v: float, kx: np.ndarray, ky: np.ndarray) -> float:
    """Mean of the one-sided limits, element by element, from the definition in interp_map's docstring."""
    k = len(kx)

    def on_segment(s: int) -> float:
        if s in (0, k):
            end = 0 if s == 0 else k - 1
            other = [j for j in range(k) if kx[j] != kx[end]]
            j = (other[0] if s == 0 else other[-1]) if other else end
            slope = (ky[j] - ky[end]) / (kx[j] - kx[end]) if other else 0.0
            return float(ky[end] + (v - kx[end]) * slope)
        dx = kx[s] - kx[s - 1]
        slope = (ky[s] - ky[s - 1]) / dx if dx != 0 else 0.0
        return float(ky[s - 1] + (v - kx[s - 1]) * slope)

    left, right = int(np.searchsorted(kx, v, "left")), int(np.searchsorted(kx, v, "right"))
    return 0.5 * (on_segment(left) + on_segment(right))


@pytest.mark.parametrize("seed", range(6))
def test_interp_map_equals_the_limit_definition_with_tied_knots(seed: int) -> None:
    rng = np.random.default_rng(seed)
    kx = np.sort(np.round(rng.normal(size=(3, 9)), 1), axis=-1)  # rounding ties knots, ends included
    ky = np.sort(rng.normal(size=(3, 9)), axis=-1)
    x = np.concatenate([rng.normal(scale=2.0, size=(3, 40)), kx, kx[:, :3] - 5, kx[:, -3:] + 5], axis=-1)
    got = interp_map(torch.from_numpy(x), torch.from_numpy(kx), torch.from_numpy(ky)).numpy()
    want = np.array([[_interp_reference(v, kx[r], ky[r]) for v in x[r]] for r in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_interp_map_gradcheck() -> None:
    kx = torch.tensor([[-1.0, 0.0, 0.7, 2.0]], dtype=torch.float64, requires_grad=True)
    ky = torch.tensor([[-2.0, 0.1, 0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[-3.0, -0.4, 0.3, 1.1, 2.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(interp_map, (x, kx, ky))


def test_knots_map_is_the_eval_map() -> None:
    x = torch.randn(5, 4, 2000, dtype=torch.float64) * 2 + 1
    knots = empirical_quantiles(x.transpose(0, 1).reshape(4, -1), knot_levels(64))
    y = group_map(x, 4, knots=knots)
    z = group_map(x, 4)
    gap = (y - z).abs()  # same distribution: the fixed map is close to the per-sample map except far tails
    assert float(gap.mean()) < 0.05 and float(gap.quantile(0.99)) < 0.25
    assert torch.equal(group_map(x[:1], 4, knots=knots), y[:1])  # batch-independent


# --------------------------------------------------------------------------------------- surrogate backward


def test_ste_is_group_norm_backward_for_the_gaussian_target() -> None:
    x = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 6, 5, dtype=torch.float64)
    (got,) = torch.autograd.grad(group_map(x, 2, grad="ste"), x, g)
    (want,) = torch.autograd.grad(torch.nn.functional.group_norm(x, 2, eps=1e-5), x, g)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("target", ["uniform", "cauchy"])
def test_ste_is_the_gaussian_parametric_map_derivative(target: str) -> None:
    x = torch.randn(2, 40, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 40, dtype=torch.float64)
    (got,) = torch.autograd.grad(quantile_map(x, target, grad="ste"), x, g)
    ranks = torch.from_numpy(scipy.stats.rankdata(x.detach().numpy(), axis=-1))
    u = (ranks - 0.5) / 40
    slope = {
        "uniform": torch.full_like(u, 2 * math.sqrt(3)),
        "cauchy": math.pi / torch.cos(math.pi * (u - 0.5)) ** 2,
    }
    rho = slope[target] * torch.exp(-0.5 * torch.special.ndtri(u) ** 2) / math.sqrt(2 * math.pi)
    (want,) = torch.autograd.grad(
        torch.nn.functional.group_norm(x.unsqueeze(1), 1, eps=1e-5).squeeze(1), x, g * rho
    )
    torch.testing.assert_close(got, want)


def test_ecdf_slope_estimates_the_population_map_derivative() -> None:
    sigma = 2.5
    x = (torch.randn(4, 20000, generator=torch.Generator().manual_seed(0)) * sigma + 3).requires_grad_()
    (gx,) = torch.autograd.grad(quantile_map(x, grad="ecdf").sum(), x)
    central = (x.detach() - 3).abs() < sigma
    assert abs(float(gx[central].median()) - 1 / sigma) < 0.02 / sigma
    u = torch.rand(2, 20000, generator=torch.Generator().manual_seed(1), requires_grad=True)
    (gu,) = torch.autograd.grad(quantile_map(u, "uniform", grad="ecdf").sum(), u)
    assert abs(float(gu.median()) - 2 * math.sqrt(3)) < 0.1


def test_ecdf_slope_is_finite_with_ties_and_zero_for_a_constant_row() -> None:
    x = torch.tensor([[0.0] * 30 + [float(i) for i in range(1, 11)], [1.0] * 40], requires_grad=True)
    (gx,) = torch.autograd.grad(quantile_map(x).sum(), x)
    assert bool(torch.isfinite(gx).all()) and bool((gx[0] > 0).all()) and bool((gx[1] == 0).all())


def _soft_reference(x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """t -> Q'(u) * soft ECDF(t), with the bandwidth and rank levels u frozen at x (gaussian target)."""
    m = x.shape[-1]
    xs = x.detach().sort(-1).values
    q1, q3 = xs[:, (m - 1) // 4 : (m - 1) // 4 + 1], xs[:, 3 * (m - 1) // 4 : 3 * (m - 1) // 4 + 1]
    tau = (0.5 * 8 * (q3 - q1) / m).unsqueeze(-1)
    ranks = torch.from_numpy(scipy.stats.rankdata(x.detach().numpy(), axis=-1))
    dq = math.sqrt(2 * math.pi) * torch.exp(0.5 * torch.special.ndtri((ranks - 0.5) / m) ** 2)
    return lambda t: torch.sigmoid((t.unsqueeze(-1) - t.unsqueeze(-2)) / tau).sum(-1) / m * dq


def test_softrank_equals_the_soft_ecdf_derivative_when_the_window_covers_the_row() -> None:
    x = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 9, dtype=torch.float64)
    (got,) = torch.autograd.grad(quantile_map(x, grad="softrank"), x, g)
    reference = _soft_reference(x)
    (want,) = torch.autograd.grad(reference(x), x, g)
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(reference, (x,))
    assert abs(float(got.sum())) < 1e-9  # shift-invariant: a constant shift changes nothing


@pytest.mark.parametrize("grad", GRAD_NAMES)
def test_every_surrogate_reaches_the_input(grad: str) -> None:
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    w = torch.randn(2, 4, 6, 6)
    (gx,) = torch.autograd.grad((group_map(x, 2, grad=grad) * w).sum(), x)
    assert float(gx.abs().sum()) > 0


def _tie_blocks_by_scanning(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: walk each sorted row and record the first and last position of every run of equal values."""
    r, m = xs.shape
    start = torch.empty(r, m, dtype=torch.long)
    end = torch.empty_like(start)
    for i in range(r):
        j = 0
        while j < m:
            e = j
            while e + 1 < m and xs[i, e + 1] == xs[i, j]:
                e += 1
            start[i, j : e + 1], end[i, j : e + 1] = j, e
            j = e + 1
    return start, end


@given(
    st.integers(1, 5).flatmap(
        lambda r: st.integers(2, 12).flatmap(
            lambda m: arrays(np.int64, (r, m), elements=st.integers(0, 3)).map(lambda a: (r, m, a))
        )
    )
)
def test_sparse_tie_blocks_equal_a_row_scan(case: tuple[int, int, np.ndarray]) -> None:
    r, m, values = case
    xs = torch.from_numpy(values).float().sort(-1).values
    ties = _rank_map._tie_blocks(xs)
    start, end = _tie_blocks_by_scanning(xs)
    if ties is None:
        assert torch.equal(start, end)
    else:
        got = ties.dense(r, m)
        assert torch.equal(got[0], start) and torch.equal(got[1], end)
