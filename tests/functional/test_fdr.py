"""benjamini_hochberg: scipy and statsmodels oracles, step-up properties, validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shiftlab.functional import benjamini_hochberg


def test_matches_scipy_and_statsmodels(rng: np.random.Generator) -> None:
    p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.01, size=10), [0.02, 0.02, 1.0, 0.0]])
    adjusted, reject = benjamini_hochberg(p, alpha=0.1)
    np.testing.assert_allclose(
        adjusted.numpy(), scipy.stats.false_discovery_control(p, method="bh"), atol=1e-15
    )
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    ref_reject, ref_adjusted, _, _ = multipletests(p, alpha=0.1, method="fdr_bh")
    np.testing.assert_array_equal(reject.numpy(), ref_reject)
    np.testing.assert_allclose(adjusted.numpy(), ref_adjusted, atol=1e-15)


def test_float32_in_float32_out() -> None:
    adjusted, reject = benjamini_hochberg(torch.tensor([0.01, 0.5], dtype=torch.float32))
    assert adjusted.dtype == torch.float32 and reject.dtype == torch.bool


@given(
    p=arrays(np.float64, st.integers(1, 40), elements=st.floats(0.0, 1.0)),
    alpha=st.floats(0.001, 0.5),
)
def test_step_up_properties(p: np.ndarray, alpha: float) -> None:
    adjusted, reject = benjamini_hochberg(p, alpha=alpha)
    adj = adjusted.numpy()
    assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-15)  # monotone in p
    m = len(p)
    below = np.nonzero(np.sort(p) <= np.arange(1, m + 1) / m * alpha)[0]
    k = 0 if below.size == 0 else below[-1] + 1  # step-up: reject the k smallest
    assert reject.numpy().sum() == k
    if k:
        assert np.all(p[reject.numpy()] <= np.sort(p)[k - 1])


def test_validation() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg([0.1, 1.2])
    with pytest.raises(ValueError, match="at least 1 rows"):
        benjamini_hochberg(np.zeros(0))
    with pytest.raises(ValueError, match="1 dimension"):
        benjamini_hochberg(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="alpha"):
        benjamini_hochberg([0.1], alpha=0.0)


def test_p_values_exactly_at_the_threshold_are_rejected() -> None:
    alpha = 0.11446299595664267  # found by hypothesis: 9 * p / 9 rounds above p
    p = np.full(9, alpha)
    _, reject = benjamini_hochberg(p, alpha=alpha)
    assert bool(reject.all())
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    np.testing.assert_array_equal(reject.numpy(), multipletests(p, alpha=alpha, method="fdr_bh")[0])
