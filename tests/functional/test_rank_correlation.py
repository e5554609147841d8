"""rankdata, pearson, spearman, mean_difference: scipy oracles, invariants, gradients, validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shiftlab.functional import mean_difference, pearson, rankdata, spearman


def test_rankdata_matches_scipy_with_ties(rng: np.random.Generator) -> None:
    x = rng.integers(0, 5, size=40).astype(float)  # many ties
    np.testing.assert_array_equal(rankdata(x).numpy(), scipy.stats.rankdata(x))
    m = rng.integers(0, 4, size=(6, 9))
    for dim in (0, 1, -1):
        np.testing.assert_array_equal(rankdata(m, dim=dim).numpy(), scipy.stats.rankdata(m, axis=dim))


def test_rankdata_keeps_device_and_returns_float64() -> None:
    out = rankdata(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float32))
    assert out.dtype == torch.float64
    assert out.tolist() == [3.0, 1.0, 2.0]


@given(arrays(np.float64, st.integers(1, 30), elements=st.floats(-1e6, 1e6) | st.sampled_from([0.0, 1.0])))
def test_rankdata_sums_to_triangular_number(x: np.ndarray) -> None:
    n = x.shape[0]
    ranks = rankdata(x)
    assert float(ranks.sum()) == n * (n + 1) / 2
    np.testing.assert_array_equal(ranks.numpy(), scipy.stats.rankdata(x))


def test_rankdata_validation() -> None:
    with pytest.raises(ValueError, match="at least one dimension"):
        rankdata(torch.tensor(1.0))
    with pytest.raises(ValueError, match="out of range"):
        rankdata(np.ones((2, 2)), dim=2)
    with pytest.raises(ValueError, match="non-finite"):
        rankdata([1.0, np.nan])


def test_pearson_and_spearman_match_scipy(rng: np.random.Generator) -> None:
    x = rng.normal(size=50)
    y = 0.4 * x + rng.normal(size=50)
    assert float(pearson(x, y)) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-14)
    xt = np.round(x)  # ties
    assert float(spearman(xt, y)) == pytest.approx(scipy.stats.spearmanr(xt, y).statistic, abs=1e-14)


def test_correlations_are_batched_and_broadcast(rng: np.random.Generator) -> None:
    x = rng.normal(size=(4, 20))
    y = rng.normal(size=(4, 20))
    batched = pearson(x, y).numpy()
    assert batched.shape == (4,)
    for i in range(4):
        assert batched[i] == pytest.approx(scipy.stats.pearsonr(x[i], y[i]).statistic, abs=1e-14)
        assert float(spearman(x, y)[i]) == pytest.approx(
            scipy.stats.spearmanr(x[i], y[i]).statistic, abs=1e-14
        )
    # a single x against a batch of y broadcasts
    np.testing.assert_allclose(pearson(x[:1], y).numpy(), [pearson(x[0], y[i]).item() for i in range(4)])
    # correlation along dim 0 (observations in rows)
    np.testing.assert_allclose(pearson(x.T, y.T, dim=0).numpy(), batched, atol=1e-14)


def test_mean_difference(rng: np.random.Generator) -> None:
    x = rng.normal(size=(3, 10))
    y = rng.normal(size=(3, 10))
    np.testing.assert_allclose(mean_difference(x, y).numpy(), (x - y).mean(axis=1), atol=1e-14)


def test_pearson_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(12, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pearson, (x, y))


def test_correlation_validation() -> None:
    with pytest.raises(ValueError, match="zero variance"):
        pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="zero variance"):
        spearman([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="broadcast"):
        pearson(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="at least 2"):
        pearson([1.0], [2.0])
    with pytest.raises(ValueError, match="non-finite"):
        spearman([1.0, np.inf, 2.0], [1.0, 2.0, 3.0])
