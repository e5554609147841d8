"""crossfit: kernel ridge against scikit-learn and brute-force leave-one-out; residuals are out-of-fold."""

from __future__ import annotations

import doctest
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge

from shiftlab.functional import crossfit
from shiftlab.functional.crossfit import crossfit_residuals, kernel_ridge_predict


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small tensors: one intra-op thread avoids thread-pool contention on a shared CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_docstring_examples() -> None:
    result = doctest.testmod(crossfit, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0, ddof=1)
    return (train - mean) / std, (test - mean) / std


@pytest.mark.parametrize(("ridge", "scale"), [(0.1, 1.0), (1e-3, 0.5), (3.0, 2.0)])
def test_matches_sklearn_kernel_ridge(rng: np.random.Generator, ridge: float, scale: float) -> None:
    x, xt = rng.normal(size=(60, 3)), rng.normal(size=(15, 3))
    y = np.sin(x[:, 0]) + x[:, 1] ** 2 + 0.1 * rng.normal(size=60)
    ours = kernel_ridge_predict(x, y, xt, lengthscale=scale, ridges=(ridge,)).numpy()
    xs, xts = _standardised(x, xt)
    ref = KernelRidge(alpha=ridge, kernel="rbf", gamma=1 / (2 * scale**2)).fit(xs, y - y.mean())
    np.testing.assert_allclose(ours, ref.predict(xts) + y.mean(), atol=1e-9)


def _loo_error(x: np.ndarray, y: np.ndarray, ridge: float, scale: float) -> float:
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        # the closed form is the leave-one-out of the ridge fit to y centred on the full-sample mean
        yc = y - y.mean()
        k = np.exp(-((x[keep, None] - x[None, keep]) ** 2).sum(-1) / (2 * scale**2))
        coef = np.linalg.solve(k + ridge * np.eye(keep.sum()), yc[keep])
        k_i = np.exp(-((x[i] - x[keep]) ** 2).sum(-1) / (2 * scale**2))
        errors.append((yc[i] - k_i @ coef) ** 2)
    return float(np.mean(errors))


def test_penalty_is_the_brute_force_leave_one_out_minimiser(rng: np.random.Generator) -> None:
    x = rng.uniform(-2, 2, size=(40, 1))
    y = np.sin(3 * x[:, 0]) + 0.3 * rng.normal(size=40)
    ridges = (1e-3, 1e-1, 10.0)
    xs = (x - x.mean(0)) / x.std(0, ddof=1)
    best = min(ridges, key=lambda r: _loo_error(xs, y, r, 0.7))
    xt = np.linspace(-2, 2, 9)[:, None]
    chosen = kernel_ridge_predict(x, y, xt, lengthscale=0.7, ridges=ridges)
    fixed = kernel_ridge_predict(x, y, xt, lengthscale=0.7, ridges=(best,))
    torch.testing.assert_close(chosen, fixed, rtol=0, atol=1e-12)


def test_nonlinear_confounding_is_removed_where_least_squares_leaves_it() -> None:
    rng = np.random.default_rng(3)
    z = rng.uniform(-3, 3, size=400)
    signal = np.cos(2 * z)
    y = signal + 0.2 * rng.normal(size=400)
    kernel = crossfit_residuals(y, z, seed=0).numpy()
    linear = crossfit_residuals(y, z, regressor="linear", seed=0).numpy()
    assert np.std(kernel) == pytest.approx(0.2, rel=0.2)
    assert abs(np.corrcoef(kernel, signal)[0, 1]) < 0.15
    assert np.corrcoef(linear, signal)[0, 1] > 0.9


def test_every_row_is_predicted_by_a_model_that_never_saw_it(rng: np.random.Generator) -> None:
    n = 30
    z = torch.arange(n, dtype=torch.float64)  # the row index doubles as the covariate
    groups = torch.arange(n) // 3
    seen: list[tuple[set[int], set[int]]] = []

    def record(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor) -> torch.Tensor:
        seen.append(({int(v) for v in z_train}, {int(v) for v in z_test}))
        return torch.zeros(z_test.shape[0], y_train.shape[1], dtype=torch.float64)

    y = torch.as_tensor(rng.normal(size=(n, 2)))
    resid = crossfit_residuals(y, z, regressor=record, n_folds=5, seed=1, groups=groups)
    torch.testing.assert_close(resid, y)  # zero predictions: residual = y
    tested = set()
    for train, test in seen:
        assert not train & test
        tested |= test
        for row in test:  # groups stay in one fold
            assert {3 * (row // 3), 3 * (row // 3) + 1, 3 * (row // 3) + 2} <= test
    assert tested == set(range(n))


def test_same_seed_same_residuals(rng: np.random.Generator) -> None:
    z = rng.normal(size=(50, 2))
    y = z[:, 0] * z[:, 1] + rng.normal(size=50)
    a, b = crossfit_residuals(y, z, seed=4), crossfit_residuals(y, z, seed=4)
    c = crossfit_residuals(y, z, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: crossfit_residuals(np.ones(10), np.arange(10.0), n_folds=4), "folds of fewer than 3"),
        (lambda: crossfit_residuals(np.ones(10), np.arange(9.0)), "10 rows"),
        (lambda: crossfit_residuals(np.ones(30), np.arange(30.0), regressor="forest"), "regressor"),  # type: ignore[arg-type]
        (
            lambda: crossfit_residuals(
                np.ones(30), np.arange(30.0), regressor=lambda a, b, c: torch.zeros(c.shape[0], 3)
            ),
            "shape",
        ),
        (
            lambda: crossfit_residuals(np.ones(30), np.arange(30.0), groups=np.arange(30) // 10),
            "fewer than n_folds",
        ),
        (lambda: kernel_ridge_predict(np.ones((5, 1)), np.ones(5), np.ones((2, 1))), "identical"),
        (lambda: kernel_ridge_predict(np.ones((5, 2)), np.ones(5), np.ones((2, 1))), "columns"),
    ],
)
def test_bad_input_raises(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
