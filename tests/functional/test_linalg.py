"""shiftlab.functional.linalg: oracles (numpy, scipy, scikit-learn), invariants, gradients, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.covariance import LedoitWolf
from sklearn.covariance import ledoit_wolf as sk_ledoit_wolf
from sklearn.covariance import ledoit_wolf_shrinkage as sk_ledoit_wolf_shrinkage

from shiftlab.functional import (
    covariance,
    effective_rank,
    effective_rank_from_spectrum,
    eigengap,
    ledoit_wolf_shrinkage,
    principal_angles,
    stable_rank,
    symmetric_spectrum,
)


def _correlated(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)


# ---------------------------------------------------------------------------------------------------------
# covariance
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(50, 5), (8, 12), (3, 1)])
def test_covariance_matches_numpy(rng: np.random.Generator, n: int, d: int) -> None:
    x = _correlated(rng, n, d)
    np.testing.assert_allclose(covariance(x).numpy(), np.atleast_2d(np.cov(x, rowvar=False)), atol=1e-12)
    np.testing.assert_allclose(
        covariance(x, ddof=0).numpy(), np.atleast_2d(np.cov(x, rowvar=False, bias=True)), atol=1e-12
    )
    np.testing.assert_allclose(covariance(x, center=False, ddof=0).numpy(), x.T @ x / n, atol=1e-12)


def test_covariance_matches_torch_cov_in_float32() -> None:
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    out = covariance(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.cov(x.T))
    assert torch.equal(out, out.T)


@pytest.mark.parametrize(("n", "d"), [(30, 10), (10, 30), (200, 3), (7, 2)])
@pytest.mark.parametrize("center", [True, False])
def test_ledoit_wolf_matches_sklearn(rng: np.random.Generator, n: int, d: int, center: bool) -> None:
    x = _correlated(rng, n, d)
    expected_cov, expected_alpha = sk_ledoit_wolf(x, assume_centered=not center)
    assert float(ledoit_wolf_shrinkage(x, center=center)) == pytest.approx(expected_alpha, abs=1e-12)
    assert expected_alpha == pytest.approx(sk_ledoit_wolf_shrinkage(x, assume_centered=not center), abs=1e-15)
    ours = covariance(x, shrinkage="ledoit-wolf", center=center, ddof=0).numpy()
    np.testing.assert_allclose(ours, expected_cov, rtol=1e-10, atol=1e-12)
    if center:
        np.testing.assert_allclose(ours, LedoitWolf().fit(x).covariance_, rtol=1e-10, atol=1e-12)
        # ddof=1 rescales the whole shrunk matrix by n / (n - 1)
        np.testing.assert_allclose(
            covariance(x, shrinkage="ledoit-wolf").numpy(), expected_cov * n / (n - 1), rtol=1e-10
        )


def test_fixed_shrinkage_formula_and_trace(rng: np.random.Generator) -> None:
    x = _correlated(rng, 20, 4)
    s = np.cov(x, rowvar=False)
    for alpha in (0.0, 0.3, 1.0):
        expected = (1 - alpha) * s + alpha * np.trace(s) / 4 * np.eye(4)
        out = covariance(x, shrinkage=alpha).numpy()
        np.testing.assert_allclose(out, expected, atol=1e-12)
        assert np.trace(out) == pytest.approx(np.trace(s))


def test_ledoit_wolf_degenerate_cases() -> None:
    x = np.random.default_rng(0).normal(size=(10, 1))
    assert float(ledoit_wolf_shrinkage(x)) == 0.0
    # S already a multiple of the identity: delta = 0, nothing to shrink
    iso = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert float(ledoit_wolf_shrinkage(iso)) == 0.0
    np.testing.assert_allclose(covariance(iso, shrinkage="ledoit-wolf", ddof=0).numpy(), 0.5 * np.eye(2))


@pytest.mark.parametrize("shrinkage", [0.0, 0.4, "ledoit-wolf"])
def test_covariance_gradcheck(shrinkage: float | str) -> None:
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: covariance(t, shrinkage=shrinkage), (x,))  # type: ignore[arg-type]


def test_covariance_gradient_reaches_input() -> None:
    x = torch.randn(12, 4, dtype=torch.float64, requires_grad=True)
    covariance(x, shrinkage="ledoit-wolf").trace().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"shrinkage": -0.1}, ValueError, r"\[0, 1\]"),
        ({"shrinkage": 1.5}, ValueError, r"\[0, 1\]"),
        ({"shrinkage": "oas"}, ValueError, "ledoit-wolf"),
        ({"shrinkage": True}, TypeError, "shrinkage"),
        ({"ddof": 2}, ValueError, "ddof"),
        ({"ddof": 1.0}, TypeError, "ddof"),
    ],
)
def test_covariance_rejects_bad_options(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        covariance(np.ones((5, 2)), **kwargs)  # type: ignore[arg-type]


def test_covariance_rejects_bad_data() -> None:
    with pytest.raises(ValueError, match="2 dimension"):
        covariance(np.arange(5.0))
    with pytest.raises(ValueError, match="at least 2 rows"):
        covariance(np.ones((1, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        covariance(np.array([[1.0, np.inf], [0.0, 1.0]]))


# ---------------------------------------------------------------------------------------------------------
# symmetric spectrum
# ---------------------------------------------------------------------------------------------------------


def test_symmetric_spectrum_matches_numpy_and_reconstructs(rng: np.random.Generator) -> None:
    a = rng.normal(size=(6, 6))
    a = a + a.T
    values, vectors = symmetric_spectrum(a)
    np.testing.assert_allclose(values.numpy(), np.linalg.eigvalsh(a)[::-1], atol=1e-12)
    assert bool((values[:-1] >= values[1:]).all())
    np.testing.assert_allclose((vectors @ torch.diag(values) @ vectors.T).numpy(), a, atol=1e-12)
    np.testing.assert_allclose((vectors.T @ vectors).numpy(), np.eye(6), atol=1e-12)
    # deterministic signs: the largest-magnitude entry of each eigenvector is positive
    pivots = vectors.abs().argmax(dim=0)
    assert bool((vectors[pivots, torch.arange(6)] > 0).all())


def test_symmetric_spectrum_keeps_dtype_and_tolerates_round_off() -> None:
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    cov = x.T @ x
    cov[0, 1] += 1e-6 * float(cov.abs().max())  # float32 round-off scale
    values, vectors = symmetric_spectrum(cov)
    assert values.dtype == torch.float32 and vectors.dtype == torch.float32


def test_symmetric_spectrum_rejects_asymmetric_and_non_square() -> None:
    with pytest.raises(ValueError, match="symmetric"):
        symmetric_spectrum(np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        symmetric_spectrum(np.ones((2, 3)))
    with pytest.raises(ValueError, match="2 dimension"):
        symmetric_spectrum(np.ones(3))
    # a looser tolerance is an explicit choice
    values, _ = symmetric_spectrum(np.array([[1.0, 1e-3], [0.0, 1.0]]), rtol=1e-2)
    assert values.shape == (2,)


# ---------------------------------------------------------------------------------------------------------
# effective rank and stable rank
# ---------------------------------------------------------------------------------------------------------


def _numpy_effective_rank(a: np.ndarray) -> float:
    s = np.linalg.svd(a, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_effective_rank_oracle_and_known_values(rng: np.random.Generator) -> None:
    a = rng.normal(size=(20, 7))
    assert float(effective_rank(a)) == pytest.approx(_numpy_effective_rank(a), rel=1e-12)
    assert float(effective_rank(np.eye(5))) == pytest.approx(5.0)
    planted = np.diag([3.0, 3.0, 3.0, 0.0, 0.0])
    assert float(effective_rank(planted)) == pytest.approx(3.0)
    assert float(effective_rank(np.outer(rng.normal(size=6), rng.normal(size=4)))) == pytest.approx(1.0)


def test_effective_rank_batched_and_float32() -> None:
    a = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(0))
    out = effective_rank(a)
    assert out.shape == (3,) and out.dtype == torch.float32
    for i in range(3):
        assert float(out[i]) == pytest.approx(float(effective_rank(a[i])), rel=1e-6)


def test_effective_rank_from_spectrum_agrees_with_matrix_form(rng: np.random.Generator) -> None:
    a = rng.normal(size=(12, 5))
    s = np.linalg.svd(a, compute_uv=False)
    assert float(effective_rank_from_spectrum(s)) == pytest.approx(float(effective_rank(a)), rel=1e-12)
    # PSD matrix: singular values = eigenvalues; rank-deficient covariances have round-off negatives
    x = rng.normal(size=(3, 6))
    cov = np.cov(x, rowvar=False)
    eig = np.linalg.eigvalsh(cov)
    assert abs(eig.min()) < 1e-12  # rank 2 out of 6: zeros up to round-off, often slightly negative
    assert float(effective_rank_from_spectrum(eig)) == pytest.approx(float(effective_rank(cov)), rel=1e-9)


@given(
    n=st.integers(1, 8),
    d=st.integers(1, 8),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_effective_rank_range_and_scale_invariance(n: int, d: int, scale: float, seed: int) -> None:
    a = np.random.default_rng(seed).normal(size=(n, d))
    er = float(effective_rank(a))
    assert 1.0 - 1e-9 <= er <= min(n, d) + 1e-9
    assert float(effective_rank(scale * a)) == pytest.approx(er, rel=1e-9)
    sr = float(stable_rank(a))
    assert 1.0 - 1e-9 <= sr <= min(n, d) + 1e-9
    assert float(stable_rank(scale * a)) == pytest.approx(sr, rel=1e-9)


def test_stable_rank_oracle(rng: np.random.Generator) -> None:
    a = rng.normal(size=(9, 4))
    expected = np.linalg.norm(a, "fro") ** 2 / np.linalg.norm(a, 2) ** 2
    assert float(stable_rank(a)) == pytest.approx(expected, rel=1e-12)
    t = torch.from_numpy(a)
    ref = torch.linalg.matrix_norm(t, "fro") ** 2 / torch.linalg.matrix_norm(t, 2) ** 2
    assert float(stable_rank(t)) == pytest.approx(float(ref), rel=1e-12)
    assert float(stable_rank(np.diag([2.0, 1.0, 1.0]))) == pytest.approx(1.5)


def test_rank_gradcheck() -> None:
    a = torch.randn(6, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(effective_rank, (a,))
    assert torch.autograd.gradcheck(stable_rank, (a,))
    v = torch.tensor([3.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(effective_rank_from_spectrum, (v,))


def test_rank_validation() -> None:
    for fn in (effective_rank, stable_rank):
        with pytest.raises(ValueError, match="all-zero"):
            fn(np.zeros((3, 3)))
        with pytest.raises(ValueError, match="at least 2 dimensions"):
            fn(np.ones(3))
        with pytest.raises(ValueError, match="non-finite"):
            fn(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="all-zero"):
        effective_rank(np.stack([np.eye(2), np.zeros((2, 2))]))
    with pytest.raises(ValueError, match="nonnegative"):
        effective_rank_from_spectrum([1.0, -0.1])
    with pytest.raises(ValueError, match="all-zero"):
        effective_rank_from_spectrum([0.0, 0.0])
    with pytest.raises(ValueError, match="non-empty"):
        effective_rank_from_spectrum(np.zeros(0))


# ---------------------------------------------------------------------------------------------------------
# eigengap
# ---------------------------------------------------------------------------------------------------------


def test_eigengap_values() -> None:
    gap = eigengap([5.0, 4.0, 1.0, 0.5], rank=2)
    assert (gap.rank, gap.absolute, gap.relative) == (2, 3.0, 0.75)
    assert eigengap(np.array([2.0, 2.0, 1.0]), 1).absolute == 0.0
    # negative eigenvalues (indefinite matrices): relative gap uses |lambda_k|
    assert eigengap([1.0, -1.0, -3.0], 2).relative == pytest.approx(2.0)


def test_eigengap_needs_the_untruncated_spectrum() -> None:
    full = symmetric_spectrum(np.diag([4.0, 3.0, 1.0, 0.5])).eigenvalues
    assert eigengap(full, 2).absolute == pytest.approx(2.0)
    truncated = full[:2]
    with pytest.raises(ValueError, match="untruncated"):
        eigengap(truncated, 2)  # the gap after rank 2 needs the 3rd eigenvalue
    for bad in (0, -1, 4):
        with pytest.raises(ValueError, match="1 <= rank < len"):
            eigengap(full, bad)
    with pytest.raises(ValueError, match="at least 2 values"):
        eigengap([1.0], 1)


def test_eigengap_validation() -> None:
    with pytest.raises(ValueError, match="non-increasing"):
        eigengap([1.0, 2.0, 3.0], 1)
    with pytest.raises(ValueError, match="smaller rank"):
        eigengap([1.0, 0.0, 0.0], 2)
    with pytest.raises(TypeError, match="rank must be an int"):
        eigengap([2.0, 1.0], True)
    with pytest.raises(TypeError, match="rank must be an int"):
        eigengap([2.0, 1.0], 1.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# principal angles
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "q"), [(1, 1), (3, 2), (2, 4), (5, 5)])
def test_principal_angles_match_scipy(rng: np.random.Generator, p: int, q: int) -> None:
    a = rng.normal(size=(10, p))
    b = rng.normal(size=(10, q))
    ours = principal_angles(a, b).numpy()
    ref = scipy.linalg.subspace_angles(a, b)[::-1]  # scipy returns descending angles
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    assert np.all(np.diff(ours) >= 0)
    np.testing.assert_allclose(principal_angles(b, a).numpy(), ours, atol=1e-12)


def test_principal_angles_known_cases() -> None:
    eye = np.eye(4)
    np.testing.assert_allclose(principal_angles(eye[:, :2], eye[:, 2:]).numpy(), [math.pi / 2] * 2)
    a = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(principal_angles(a, b).numpy(), [0.0, math.pi / 4], atol=1e-15)


def test_principal_angles_resolve_tiny_angles_next_to_large_ones() -> None:
    # one angle of 1e-9 rad and one of 90 degrees: arccos alone would return 0 for the small one
    eye = np.eye(5)
    a = eye[:, :2]
    b = np.stack([eye[0] + 1e-9 * eye[2], eye[3]], axis=1)
    np.testing.assert_allclose(principal_angles(a, b).numpy(), [1e-9, math.pi / 2], rtol=1e-6)


@given(n=st.integers(2, 9), p=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_principal_angles_of_a_subspace_with_itself_are_zero(n: int, p: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = min(p, n)
    a = rng.normal(size=(n, p))
    mix = rng.normal(size=(p, p)) + 3 * np.eye(p)  # invertible change of basis
    angles = principal_angles(a, a @ mix)
    assert angles.shape == (p,)
    assert float(angles.abs().max()) < 1e-6


def test_principal_angles_float32_and_validation() -> None:
    a = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    assert principal_angles(a, a).dtype == torch.float32
    with pytest.raises(ValueError, match="same number of rows"):
        principal_angles(np.ones((4, 1)), np.ones((5, 1)))
    with pytest.raises(ValueError, match="more columns than rows"):
        principal_angles(np.random.default_rng(0).normal(size=(2, 3)), np.ones((2, 1)))
    dependent = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="linearly independent"):
        principal_angles(dependent, np.eye(3)[:, :1])
