"""equivalence: TOST, power, MDE, sample size against scipy, pingouin and simulation; bootstrap decisions."""

from __future__ import annotations

import doctest
import math
from collections.abc import Iterator

import numpy as np
import pingouin as pg
import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st

from shiftlab.functional import equivalence, pearson
from shiftlab.functional.equivalence import (
    bootstrap_interval,
    bootstrap_p_value,
    bootstrap_tost,
    correlation_power,
    equivalence_sample_size,
    minimum_detectable_correlation,
    tost_correlation,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small tensors: one intra-op thread avoids thread-pool contention on a shared CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_docstring_examples() -> None:
    result = doctest.testmod(equivalence, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize(("r", "n", "k"), [(0.05, 200, 0), (-0.3, 40, 2), (0.6, 25, 1)])
def test_tost_p_values_match_scipy_normal(method: str, r: float, n: int, k: int) -> None:
    res = tost_correlation(r, n, 0.2, k=k, method=method)  # type: ignore[arg-type]
    c = math.sqrt(1 + r * r / 2) if method == "spearman" else 1.0
    se = c / math.sqrt(n - 3 - k)
    z, zeta = np.arctanh(r), np.arctanh(0.2)
    assert res.p_lower == pytest.approx(scipy.stats.norm.sf((z + zeta) / se), abs=1e-12)
    assert res.p_upper == pytest.approx(scipy.stats.norm.cdf((z - zeta) / se), abs=1e-12)
    assert res.p_value == max(res.p_lower, res.p_upper)
    half = scipy.stats.norm.ppf(0.95) * se
    assert (res.ci_low, res.ci_high) == pytest.approx((np.tanh(z - half), np.tanh(z + half)), abs=1e-12)


@given(
    r=st.floats(-0.95, 0.95),
    n=st.integers(8, 5000),
    delta=st.floats(0.02, 0.9),
    alpha=st.sampled_from([0.01, 0.05, 0.1]),
)
def test_tost_rejects_exactly_when_the_1_minus_2alpha_interval_is_inside_the_margin(
    r: float, n: int, delta: float, alpha: float
) -> None:
    res = tost_correlation(r, n, delta, alpha=alpha)
    inside = -delta < res.ci_low and res.ci_high < delta
    margin = min(abs(res.ci_low + delta), abs(res.ci_high - delta))
    if margin > 1e-9:  # away from the boundary, where round-off decides
        assert res.equivalent == inside


def test_tost_has_its_nominal_size_on_the_margin() -> None:
    # true correlation exactly at the margin: equivalence must be declared at most alpha of the time
    gen = torch.Generator().manual_seed(0)
    reps, n, delta = 4000, 150, 0.2
    cov = torch.tensor([[1.0, delta], [delta, 1.0]], dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    xy = torch.randn(reps, n, 2, generator=gen, dtype=torch.float64) @ chol.T
    r = pearson(xy[..., 0], xy[..., 1])
    rate = np.mean([tost_correlation(float(v), n, delta).equivalent for v in r])
    assert 0.03 < rate < 0.07  # nominal 0.05; Monte Carlo sd 0.0034


@pytest.mark.parametrize(("r", "n"), [(0.5, 20), (0.3, 50), (0.1, 400), (0.7, 10)])
def test_power_matches_pingouin(r: float, n: int) -> None:
    assert correlation_power(r, n) == pytest.approx(pg.power_corr(r=r, n=n), abs=1e-10)
    # k covariates take k observations
    assert correlation_power(r, n + 3, k=3) == pytest.approx(pg.power_corr(r=r, n=n), abs=1e-10)


@pytest.mark.parametrize("n", [20, 30, 60, 120, 480])
def test_mde_matches_pingouin(n: int) -> None:
    assert minimum_detectable_correlation(n) == pytest.approx(pg.power_corr(n=n, power=0.8), abs=1e-6)
    assert minimum_detectable_correlation(n, power=0.9, alpha=0.01) == pytest.approx(
        pg.power_corr(n=n, power=0.9, alpha=0.01), abs=1e-6
    )


def test_mde_is_detected_with_the_stated_power_in_simulation() -> None:
    n = 40
    rho = minimum_detectable_correlation(n)
    gen = torch.Generator().manual_seed(1)
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    xy = torch.randn(3000, n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    r = pearson(xy[..., 0], xy[..., 1]).numpy()
    t = r * np.sqrt((n - 2) / (1 - r * r))
    power = np.mean(2 * scipy.stats.t.sf(np.abs(t), n - 2) < 0.05)
    assert power == pytest.approx(0.8, abs=0.035)


def test_equivalence_sample_size_gives_the_stated_power_under_the_null() -> None:
    n = equivalence_sample_size(0.15)
    gen = torch.Generator().manual_seed(2)
    r = pearson(torch.randn(2000, n, generator=gen, dtype=torch.float64), torch.randn(2000, n, generator=gen))
    rate = np.mean([tost_correlation(float(v), n, 0.15).equivalent for v in r])
    assert rate == pytest.approx(0.8, abs=0.035)
    assert equivalence_sample_size(0.15, k=2) == n + 2
    assert equivalence_sample_size(0.1) > equivalence_sample_size(0.2)


def test_bootstrap_interval_is_numpys_quantile(rng: np.random.Generator) -> None:
    d = rng.normal(size=(999, 3))
    low, high = bootstrap_interval(d, alpha=0.1)
    np.testing.assert_allclose(low.numpy(), np.quantile(d, 0.05, axis=0), atol=1e-14)
    np.testing.assert_allclose(high.numpy(), np.quantile(d, 0.95, axis=0), atol=1e-14)


def test_bootstrap_p_value_inverts_the_percentile_interval(rng: np.random.Generator) -> None:
    b = 1999
    assert float(bootstrap_p_value(np.linspace(0.01, 1.0, b))) == pytest.approx(2 / (b + 1))
    assert float(bootstrap_p_value(np.zeros(b))) == 1.0
    d = rng.normal(loc=0.5, scale=0.25, size=b)  # about 2.3% of the mass below 0
    p = float(bootstrap_p_value(d))
    low, _ = bootstrap_interval(d, alpha=p * 0.9)
    low_wider, _ = bootstrap_interval(d, alpha=min(0.99, p * 1.1))
    assert float(low) < 0 < float(low_wider)


@given(
    loc=st.floats(-0.3, 0.3),
    scale=st.floats(0.005, 0.2),
    delta=st.floats(0.05, 0.5),
    seed=st.integers(0, 1000),
)
def test_bootstrap_tost_agrees_with_the_interval(loc: float, scale: float, delta: float, seed: int) -> None:
    d = np.random.default_rng(seed).normal(loc, scale, size=4000)
    res = bootstrap_tost(d, delta)
    low, high = bootstrap_interval(d, alpha=0.1)
    inside = -delta < float(low) and float(high) < delta
    margin = min(abs(float(low) + delta), abs(float(high) - delta))
    if margin > 3 * scale * 0.02:  # leave out cases where one replicate decides
        assert (float(res.p_value) <= 0.05) == inside


def test_bootstrap_tost_counts_tails() -> None:
    d = torch.tensor([-0.3, -0.05, 0.0, 0.05, 0.2])
    res = bootstrap_tost(d, 0.1)
    assert float(res.p_lower) == pytest.approx(2 / 6)
    assert float(res.p_upper) == pytest.approx(2 / 6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: tost_correlation(1.0, 30, 0.1), "strictly between -1 and 1"),
        (lambda: tost_correlation(0.1, 3, 0.1), "n > k \\+ 3"),
        (lambda: tost_correlation(0.1, 10, 0.1, k=7), "n > k \\+ 3"),
        (lambda: tost_correlation(0.1, 30, 1.5), "delta"),
        (lambda: tost_correlation(0.1, 30, 0.1, method="kendall"), "method"),  # type: ignore[arg-type]
        (lambda: minimum_detectable_correlation(30, power=0.01), "not above the test level"),
        (lambda: equivalence_sample_size(0.0), "delta"),
        (lambda: bootstrap_p_value([0.1, float("nan")]), "non-finite"),
        (lambda: bootstrap_interval([0.1]), "at least 2 rows"),
    ],
)
def test_bad_input_raises(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
