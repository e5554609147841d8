import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.utils.estimator_checks import parametrize_with_checks

from shiftlab.pmh import estimate_nuisance
from shiftlab.pmh._matcher import PMHMatcher


@parametrize_with_checks(
    [PMHMatcher(nuisance="isotropic", sigma=0.5), PMHMatcher(nuisance="isotropic", strength=0.0)]
)
def test_sklearn_contract(estimator, check) -> None:
    check(estimator)


def _shifted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(300, 5))
    y = (source[:, 1] > 0).astype(int)
    target = source + np.outer(rng.normal(size=300), [3.0, 0, 0, 0, 0]) + [1.0, 0, 0, 0, 0]
    return source, y, target


def test_whitened_ridge_is_the_generalized_ridge() -> None:
    source, _, target = _shifted()
    rng = np.random.default_rng(1)
    response = source @ rng.normal(size=5) + 0.1 * rng.normal(size=300)
    lam, alpha = 2.0, 3.0
    matcher = PMHMatcher(nuisance="domain", strength=lam, rank=2).fit(source, target=target)
    sigma = matcher.nuisance_.covariance().double().numpy()
    ridge = Ridge(alpha=alpha, fit_intercept=False).fit(matcher.transform(source), response)
    w_from_whitened = matcher.transform(np.eye(5)).T @ ridge.coef_  # w = T w'
    closed_form = np.linalg.solve(source.T @ source + alpha * (np.eye(5) + lam * sigma), source.T @ response)
    np.testing.assert_allclose(w_from_whitened, closed_form, rtol=1e-8, atol=1e-10)


def test_infinite_strength_projects_out_the_nuisance() -> None:
    source, _, target = _shifted()
    matcher = PMHMatcher(nuisance="domain", strength=math.inf, rank=1).fit(source, target=target)
    basis = matcher.basis_
    assert abs(basis[0, 0]) > 0.99  # the planted shift axis is found
    mapped = matcher.transform(target)
    assert np.abs(mapped @ basis).max() < 1e-10  # and projected out exactly
    complement = np.eye(5) - basis @ basis.T
    np.testing.assert_allclose(mapped, target @ complement, atol=1e-12)


def test_given_estimate_and_errors() -> None:
    source, y, target = _shifted()
    est = estimate_nuisance(
        "domain", source=torch.from_numpy(source), target=torch.from_numpy(target), rank=1
    )
    out = PMHMatcher(nuisance=est, strength=1.0).fit(source).transform(source)
    assert out.shape == source.shape
    with pytest.raises(ValueError, match="d=5"):
        PMHMatcher(nuisance=est).fit(source[:, :3])
    with pytest.raises(ValueError, match="needs target"):
        PMHMatcher(nuisance="domain").fit(source, y)
    with pytest.raises(ValueError, match="one of"):
        PMHMatcher(nuisance="bogus").fit(source)
    with pytest.raises(ValueError, match="strength"):
        PMHMatcher(nuisance="isotropic", strength=-1.0).fit(source)
    with pytest.raises(ValueError, match="map everything to zero"):
        PMHMatcher(nuisance="isotropic", strength=math.inf).fit(source)
    labelled = PMHMatcher(nuisance="domain", rank=2).fit(source, y, target=target, target_labels=y)
    assert labelled.nuisance_.counts
