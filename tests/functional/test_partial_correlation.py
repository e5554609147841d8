"""partial_correlation: pingouin and scipy oracles, residual identity, invariants, edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from shiftlab.functional import PartialCorrelation, partial_correlation, pearson


def _confounded(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = rng.normal(size=(n, k))
    w = rng.normal(size=k)
    x = z @ w + rng.normal(size=n)
    y = 0.4 * x + z @ rng.normal(size=k) + rng.standard_t(4, size=n)
    return x, y, z


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_pingouin(seed: int, method: str, k: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    x, y, z = _confounded(rng, n, k)
    covar = [f"z{j}" for j in range(k)]
    df = pd.DataFrame(np.column_stack([x, y, z]), columns=["x", "y", *covar])
    ref = pg.partial_corr(data=df, x="x", y="y", covar=covar, method=method)

    ours = partial_correlation(x, y, z, method=method)  # type: ignore[arg-type]

    assert isinstance(ours, PartialCorrelation)
    assert (ours.n, ours.k, ours.dof, ours.method) == (n, k, n - 2 - k, method)
    assert ours.r == pytest.approx(float(ref["r"].iloc[0]), abs=1e-12)
    assert ours.p_value == pytest.approx(float(ref["p_val"].iloc[0]), rel=1e-9)
    # pingouin displays its CI rounded to 2 decimals...
    ci_shown = ref["CI95"].iloc[0]
    assert ours.ci_low == pytest.approx(ci_shown[0], abs=0.005 + 1e-12)
    assert ours.ci_high == pytest.approx(ci_shown[1], abs=0.005 + 1e-12)
    # ...from compute_esci with nx = n - k (se = 1 / sqrt(n - k - 3)), which we match to full precision
    ci_full = pg.compute_esci(stat=ours.r, nx=n - k, ny=n - k, eftype="r", decimals=15)
    np.testing.assert_allclose([ours.ci_low, ours.ci_high], ci_full, atol=1e-12)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_no_covariates_matches_scipy(rng: np.random.Generator, method: str) -> None:
    x = rng.normal(size=30)
    y = 0.3 * x + rng.normal(size=30)
    ours = partial_correlation(x, y, method=method)  # type: ignore[arg-type]
    assert ours.k == 0 and ours.dof == 28
    if method == "pearson":
        ref = scipy.stats.pearsonr(x, y)
        ci = ref.confidence_interval(0.95)
        assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    else:
        ref = scipy.stats.spearmanr(x, y)
    assert ours.r == pytest.approx(ref.statistic, abs=1e-14)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def test_r_is_the_correlation_of_ols_residuals(rng: np.random.Generator) -> None:
    x, y, z = _confounded(rng, 60, 3)
    design = np.column_stack([np.ones(60), z])
    ex = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ey = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    assert partial_correlation(x, y, z).r == pytest.approx(float(pearson(ex, ey)), abs=1e-12)
    # spearman: the same on ranks of everything
    rx, ry = scipy.stats.rankdata(x), scipy.stats.rankdata(y)
    rz = scipy.stats.rankdata(z, axis=0)
    rdesign = np.column_stack([np.ones(60), rz])
    erx = rx - rdesign @ np.linalg.lstsq(rdesign, rx, rcond=None)[0]
    ery = ry - rdesign @ np.linalg.lstsq(rdesign, ry, rcond=None)[0]
    assert partial_correlation(x, y, z, method="spearman").r == pytest.approx(
        float(pearson(erx, ery)), abs=1e-12
    )


def test_controlling_for_the_confounder_removes_the_association(rng: np.random.Generator) -> None:
    z = rng.normal(size=300)
    x = z + 0.3 * rng.normal(size=300)
    y = z + 0.3 * rng.normal(size=300)
    assert partial_correlation(x, y).p_value < 1e-10
    controlled = partial_correlation(x, y, z)
    assert abs(controlled.r) < 0.2 and controlled.ci_low < 0 < controlled.ci_high


@given(
    scale=st.floats(0.01, 100) | st.floats(-100, -0.01),
    shift=st.floats(-1e3, 1e3),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["pearson", "spearman"]),
)
def test_invariant_to_affine_transforms_of_x(scale: float, shift: float, seed: int, method: str) -> None:
    x, y, z = _confounded(np.random.default_rng(seed), 25, 2)
    base = partial_correlation(x, y, z, method=method)  # type: ignore[arg-type]
    moved = partial_correlation(scale * x + shift, y, z, method=method)  # type: ignore[arg-type]
    assert moved.r == pytest.approx(np.sign(scale) * base.r, abs=1e-9)
    assert moved.p_value == pytest.approx(base.p_value, rel=1e-6, abs=1e-12)
    # affine maps of the covariates span the same design
    assert partial_correlation(x, y, 3 * z - 1, method=method).r == pytest.approx(base.r, abs=1e-9)  # type: ignore[arg-type]


def test_spearman_is_invariant_to_monotone_transforms(rng: np.random.Generator) -> None:
    x, y, z = _confounded(rng, 30, 2)
    base = partial_correlation(x, y, z, method="spearman")
    assert partial_correlation(np.exp(x), y**3, np.tanh(z), method="spearman").r == pytest.approx(
        base.r, abs=1e-12
    )


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_perfect_partial_correlation_has_no_nan_or_warnings(rng: np.random.Generator, sign: float) -> None:
    z = rng.normal(size=(20, 2))
    x = rng.normal(size=20)
    y = sign * 2.0 * x + z @ np.array([1.0, -3.0])  # y's residual is exactly +-2 x's residual
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = partial_correlation(x, y, z)
    assert res.r == pytest.approx(sign, abs=1e-14)
    assert res.p_value < 1e-12
    assert np.isfinite([res.ci_low, res.ci_high]).all()
    assert -1.0 <= res.ci_low <= res.r <= res.ci_high <= 1.0


def test_alpha_sets_the_ci_level(rng: np.random.Generator) -> None:
    x, y, z = _confounded(rng, 50, 1)
    wide = partial_correlation(x, y, z, alpha=0.01)
    narrow = partial_correlation(x, y, z, alpha=0.2)
    assert wide.ci_low < narrow.ci_low < narrow.r < narrow.ci_high < wide.ci_high


def test_one_dimensional_covariate_is_one_column(rng: np.random.Generator) -> None:
    x, y, z = _confounded(rng, 20, 1)
    assert partial_correlation(x, y, z[:, 0]) == partial_correlation(x, y, z)


def test_validation(rng: np.random.Generator) -> None:
    x, y, z = _confounded(rng, 20, 2)
    with pytest.raises(ValueError, match=r"needs n > k \+ 3"):
        partial_correlation(x[:5], y[:5], z[:5])
    with pytest.raises(ValueError, match="x is constant"):
        partial_correlation(np.ones(20), y, z)
    with pytest.raises(ValueError, match="covariate column 1 is constant"):
        partial_correlation(x, y, np.column_stack([z[:, 0], np.full(20, 2.0)]))
    with pytest.raises(ValueError, match="linearly dependent"):
        partial_correlation(x, y, np.column_stack([z[:, 0], 2 * z[:, 0] + 1]))
    with pytest.raises(ValueError, match=r"x is .*linear function of the covariates"):
        partial_correlation(z[:, 0] - z[:, 1], y, z)
    with pytest.raises(ValueError, match="same length"):
        partial_correlation(x, y[:-1])
    with pytest.raises(ValueError, match="19 rows"):
        partial_correlation(x[:19], y[:19], z)
    with pytest.raises(ValueError, match="non-finite"):
        partial_correlation(np.where(np.arange(20) == 3, np.nan, x), y)
    with pytest.raises(ValueError, match="method"):
        partial_correlation(x, y, method="kendall")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha"):
        partial_correlation(x, y, alpha=1.5)
    with pytest.raises(ValueError, match="dimension"):
        partial_correlation(x[:, None], y)
