"""paired_bootstrap_ci: determinism, pairing, coverage, scipy comparison, validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from shiftlab.functional import BootstrapResult, mean_difference, paired_bootstrap_ci, pearson, spearman


def _batched_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1)


def test_same_seed_same_result_and_batch_size_does_not_matter(rng: np.random.Generator) -> None:
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    a = paired_bootstrap_ci(pearson, x, y, n_boot=500, seed=7)
    b = paired_bootstrap_ci(pearson, x, y, n_boot=500, seed=7, batch_size=64)
    c = paired_bootstrap_ci(pearson, x, y, n_boot=500, seed=8)
    assert isinstance(a, BootstrapResult)
    assert torch.equal(a.distribution, b.distribution)
    assert torch.equal(a.ci_low, b.ci_low) and torch.equal(a.ci_high, b.ci_high)
    assert not torch.equal(a.distribution, c.distribution)
    assert float(a.estimate) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-14)


def test_percentile_interval_is_the_quantile_of_the_distribution(rng: np.random.Generator) -> None:
    x = rng.exponential(size=25)
    res = paired_bootstrap_ci(_batched_mean, x, n_boot=999, alpha=0.1, seed=0)
    dist = res.distribution.numpy()
    assert res.distribution.shape == (999,)
    assert float(res.ci_low) == pytest.approx(np.quantile(dist, 0.05), abs=1e-14)
    assert float(res.ci_high) == pytest.approx(np.quantile(dist, 0.95), abs=1e-14)


def test_samples_are_resampled_with_the_same_indices(rng: np.random.Generator) -> None:
    x = rng.normal(size=15)
    # identical paired samples: every resampled difference is exactly zero
    res = paired_bootstrap_ci(mean_difference, x, x.copy(), n_boot=200, seed=0)
    assert bool((res.distribution == 0).all())
    # the statistic sees (B, n, ...) tensors, pairs intact, for any number of samples
    seen: list[tuple[torch.Tensor, ...]] = []

    def record(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        seen.append((a, b, c))
        return a.sum(dim=(1, 2)) + b.sum(dim=1) + c.sum(dim=1)

    idx = np.arange(15.0)
    paired_bootstrap_ci(record, np.stack([idx, idx], 1), idx * 10, idx * 100, n_boot=50, seed=1)
    a, b, c = seen[-1]
    assert a.shape == (50, 15, 2) and b.shape == (50, 15)
    assert torch.equal(a[..., 0] * 10, b) and torch.equal(b * 10, c)


def test_vector_valued_statistic(rng: np.random.Generator) -> None:
    x = rng.normal(size=(40, 3)) + np.array([0.0, 1.0, 5.0])
    res = paired_bootstrap_ci(lambda t: t.mean(dim=1), x, n_boot=400, seed=0, method="bca")
    assert res.estimate.shape == (3,) and res.distribution.shape == (400, 3)
    assert bool((res.ci_low < res.estimate).all() and (res.estimate < res.ci_high).all())


def test_percentile_ci_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(123)
    n, reps = 30, 200
    covered = shifted_covered = 0
    widths = []
    for r in range(reps):
        x = rng.normal(size=n)
        res = paired_bootstrap_ci(_batched_mean, x, n_boot=400, seed=r)
        lo, hi = float(res.ci_low), float(res.ci_high)
        covered += lo <= 0.0 <= hi
        shifted_covered += lo <= 1.0 <= hi  # one standard deviation away: 5.5 standard errors
        widths.append(hi - lo)
    # percentile intervals under-cover slightly at n=30; nominal is 0.95
    assert 0.88 <= covered / reps <= 0.99
    assert shifted_covered <= 3  # a wide or broken interval would cover it often
    assert np.mean(widths) == pytest.approx(2 * 1.96 / np.sqrt(n), rel=0.15)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_agrees_with_scipy_bootstrap(method: str) -> None:
    rng = np.random.default_rng(5)
    x = rng.exponential(size=40)
    y = x**2 + rng.normal(size=40)  # skewed, paired

    ref = scipy.stats.bootstrap(
        (x, y),
        lambda a, b, axis: _np_spearman(a, b, axis),
        paired=True,
        vectorized=True,
        n_resamples=20000,
        method="BCa" if method == "bca" else "percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    ours = paired_bootstrap_ci(spearman, x, y, n_boot=20000, seed=0, method=method)  # type: ignore[arg-type]
    # Monte Carlo error of a 2.5% quantile with 20000 resamples is about 0.005 here
    assert float(ours.ci_low) == pytest.approx(ref.low, abs=0.02)
    assert float(ours.ci_high) == pytest.approx(ref.high, abs=0.02)


def _np_spearman(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    ra = scipy.stats.rankdata(a, axis=axis)
    rb = scipy.stats.rankdata(b, axis=axis)
    ra = ra - ra.mean(axis=axis, keepdims=True)
    rb = rb - rb.mean(axis=axis, keepdims=True)
    return (ra * rb).sum(axis=axis) / np.sqrt((ra**2).sum(axis=axis) * (rb**2).sum(axis=axis))


def test_bca_shifts_towards_the_skew() -> None:
    rng = np.random.default_rng(9)
    x = rng.lognormal(sigma=1.0, size=40)
    pct = paired_bootstrap_ci(_batched_mean, x, n_boot=4000, seed=0)
    bca = paired_bootstrap_ci(_batched_mean, x, n_boot=4000, seed=0, method="bca")
    assert torch.equal(pct.distribution, bca.distribution)
    assert float(bca.ci_high) > float(pct.ci_high)  # right-skewed mean: BCa moves the interval up


def test_generator_seed_is_accepted_and_advances() -> None:
    x = np.arange(10.0)
    g = torch.Generator().manual_seed(0)
    first = paired_bootstrap_ci(_batched_mean, x, n_boot=100, seed=g)
    second = paired_bootstrap_ci(_batched_mean, x, n_boot=100, seed=g)
    assert not torch.equal(first.distribution, second.distribution)
    again = paired_bootstrap_ci(_batched_mean, x, n_boot=100, seed=torch.Generator().manual_seed(0))
    assert torch.equal(first.distribution, again.distribution)


def test_validation() -> None:
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="too small"):
        paired_bootstrap_ci(_batched_mean, x, n_boot=20, alpha=0.05)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_ci(mean_difference, x, x[:-1])
    with pytest.raises(ValueError, match="at least 2 rows"):
        paired_bootstrap_ci(_batched_mean, x[:1])
    with pytest.raises(ValueError, match="at least one sample"):
        paired_bootstrap_ci(_batched_mean)
    with pytest.raises(ValueError, match="one value per resample"):
        paired_bootstrap_ci(lambda t: t.mean(), x, n_boot=100)
    with pytest.raises(ValueError, match="non-finite"):
        paired_bootstrap_ci(lambda t: t.mean(dim=1) / 0.0, x, n_boot=100)
    with pytest.raises(ValueError, match="method"):
        paired_bootstrap_ci(_batched_mean, x, method="basic")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        paired_bootstrap_ci(_batched_mean, x, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the bootstrap distribution"):
        paired_bootstrap_ci(lambda t: t.max(dim=1).values + (t.shape[0] == 1), x, n_boot=100, method="bca")
