"""permutation_test: p-value definition, block permutations, calibration, scipy comparison."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import scipy.stats
import torch

from shiftlab.functional import PermutationTestResult, mean_difference, pearson, permutation_test, spearman


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    e = rng.normal(size=n + 200)
    return scipy.signal.lfilter([1.0], [1.0, -phi], e)[200:]  # 200 burn-in steps reach stationarity


def test_p_value_counts_the_observed_arrangement(rng: np.random.Generator) -> None:
    x = rng.normal(size=20)
    y = rng.normal(size=20)
    for alternative in ("two-sided", "greater", "less"):
        res = permutation_test(pearson, x, y, n_permutations=300, seed=1, alternative=alternative)
        assert isinstance(res, PermutationTestResult)
        null = res.null_distribution.numpy()
        obs = res.statistic
        if alternative == "two-sided":
            count = (np.abs(null) >= abs(obs)).sum()
        elif alternative == "greater":
            count = (null >= obs).sum()
        else:
            count = (null <= obs).sum()
        assert res.p_value == (1 + count) / 301
        assert res.statistic == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-14)


def test_same_seed_same_result_and_block_size_one_is_plain(rng: np.random.Generator) -> None:
    x, y = rng.normal(size=(2, 25))
    a = permutation_test(spearman, x, y, n_permutations=200, seed=3)
    b = permutation_test(spearman, x, y, n_permutations=200, seed=3, block_size=1)
    c = permutation_test(spearman, x, y, n_permutations=200, seed=4)
    assert torch.equal(a.null_distribution, b.null_distribution) and a.p_value == b.p_value
    assert not torch.equal(a.null_distribution, c.null_distribution)


@pytest.mark.parametrize(("n", "block"), [(20, 1), (20, 5), (23, 5), (7, 3)])
def test_block_permutations_move_whole_blocks(n: int, block: int) -> None:
    seen: list[torch.Tensor] = []

    def record(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(y)
        return y[:, 0]

    permutation_test(record, np.zeros(n), np.arange(float(n)), n_permutations=100, seed=0, block_size=block)
    perm = seen[-1].long()
    assert perm.shape == (100, n)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(n).expand(100, n))  # each row is a permutation
    starts = {i * block for i in range(-(-n // block))}
    for row in perm.tolist():
        pos = 0
        while pos < n:  # every output block is an original block, in order, at its full length
            start = row[pos]
            assert start in starts
            length = min(block, n - start)
            assert row[pos : pos + length] == list(range(start, start + length))
            pos += length


def test_independent_data_give_roughly_uniform_p_values() -> None:
    rng = np.random.default_rng(11)
    p = np.array(
        [
            permutation_test(
                pearson, rng.normal(size=30), rng.normal(size=30), n_permutations=199, seed=r
            ).p_value
            for r in range(200)
        ]
    )
    assert 0.40 <= p.mean() <= 0.60
    assert 0.005 <= (p <= 0.05).mean() <= 0.10
    assert scipy.stats.kstest(p, "uniform").pvalue > 1e-3


def test_dependent_data_give_the_smallest_p_value() -> None:
    rng = np.random.default_rng(12)
    x = rng.normal(size=40)
    y = 0.8 * x + 0.6 * rng.normal(size=40)
    res = permutation_test(pearson, x, y, n_permutations=999, seed=0)
    assert res.p_value == 1 / 1000
    assert permutation_test(pearson, x, y, n_permutations=999, seed=0, alternative="less").p_value > 0.99


def test_agrees_with_scipy_permutation_test() -> None:
    rng = np.random.default_rng(13)
    x = rng.normal(size=30)
    y = 0.05 * x + rng.normal(size=30)  # a weak association: p around 0.03
    ours = permutation_test(pearson, x, y, n_permutations=20000, seed=0)
    ref = scipy.stats.permutation_test(
        (x, y),
        lambda a, b, axis: scipy.stats.pearsonr(a, b, axis=axis).statistic,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=20000,
        rng=np.random.default_rng(0),
    )
    assert 0.001 < ref.pvalue < 0.2  # a p-value with a resolvable Monte Carlo error
    assert ours.p_value == pytest.approx(ref.pvalue, abs=4 * np.sqrt(ref.pvalue / 20000) + 1e-3)


def test_block_permutation_limits_false_positives_on_autocorrelated_series() -> None:
    rng = np.random.default_rng(2024)
    reps, n = 100, 200
    plain = block = 0
    for r in range(reps):
        x = _ar1(rng, n, 0.9)
        y = _ar1(rng, n, 0.9)  # independent of x
        plain += permutation_test(pearson, x, y, n_permutations=199, seed=r).p_value <= 0.05
        block += permutation_test(pearson, x, y, n_permutations=199, seed=r, block_size=20).p_value <= 0.05
    # theory: the plain test rejects ~50% of the time at phi = 0.9, n = 200; blocks of 20 bring it near 10%
    assert plain / reps >= 0.30
    assert block / reps <= 0.25
    assert block / reps <= plain / reps - 0.20


def test_validation() -> None:
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="fewer than 2 blocks"):
        permutation_test(pearson, x, x, block_size=10)
    with pytest.raises(ValueError, match="alternative"):
        permutation_test(pearson, x, x, alternative="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length"):
        permutation_test(pearson, x, x[:-1])
    with pytest.raises(ValueError, match="shape"):
        permutation_test(lambda a, b: a, x, x, n_permutations=10)
    with pytest.raises(TypeError, match="block_size"):
        permutation_test(mean_difference, x, x, block_size=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_permutations"):
        permutation_test(mean_difference, x, x, n_permutations=0)
