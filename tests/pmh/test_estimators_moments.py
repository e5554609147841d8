"""D2 ``isotropic``, D5 ``compositional``, D6 ``temporal``: oracles and planted recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shiftlab.functional.subspaces import principal_angles
from shiftlab.pmh import compositional, isotropic, temporal


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(principal_angles(a, b).max())


# ------------------------------------------------------------------------------------------------------ D2


def test_isotropic_from_sigma() -> None:
    est = isotropic(sigma=0.3, shape=(1, 4, 4))
    assert est.rank == 0 and est.dim == 16 and est.shape == (1, 4, 4)
    assert est.floor == pytest.approx(0.09)
    torch.testing.assert_close(est.covariance(), 0.09 * torch.eye(16, dtype=torch.float64))
    assert est.trace == pytest.approx(16 * 0.09)


def test_isotropic_from_repeats_is_the_pooled_within_item_variance() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(40, 1, 6)) * 5
    repeats = items + 0.2 * rng.normal(size=(40, 3, 6))
    # oracle: pooled unbiased within-item variance, averaged over coordinates
    within = repeats.var(axis=1, ddof=1).mean()
    est = isotropic(repeats=repeats)
    assert est.floor == pytest.approx(within)
    assert est.counts == {"n_items": 40, "n_repeats": 3}
    assert float(est.spectrum.sum()) == pytest.approx(6 * within)


def test_isotropic_at_a_layer_and_its_errors() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    repeats = torch.randn(10, 4, 5)
    est = isotropic(repeats=repeats, model=net, site="0")
    with torch.no_grad():
        feats = net[0](repeats)
    oracle = feats.double().var(dim=1, unbiased=True).mean()
    assert est.floor == pytest.approx(float(oracle), rel=1e-5)
    assert est.shape == (3,)
    with pytest.raises(ValueError, match="exactly one of sigma"):
        isotropic()
    with pytest.raises(ValueError, match="exactly one of sigma"):
        isotropic(sigma=1.0, repeats=repeats)
    with pytest.raises(ValueError, match="exactly one of shape"):
        isotropic(sigma=1.0)
    with pytest.raises(ValueError, match=">= 2 measurements"):
        isotropic(repeats=torch.randn(5, 1, 3))
    with pytest.raises(ValueError, match="identical"):
        isotropic(repeats=torch.ones(5, 2, 3))
    with pytest.raises(ValueError, match="sigma must be > 0"):
        isotropic(sigma=0.0, dim=3)


# ------------------------------------------------------------------------------------------------------ D5


def test_compositional_is_the_restricted_covariance() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 5)) @ rng.normal(size=(5, 5))
    keep = [1, 3]
    mask = np.zeros(5, dtype=bool)
    mask[keep] = True
    oracle = np.cov(x, rowvar=False) * np.outer(mask, mask)
    est = compositional(x, keep, rank=1, floor="residual")
    assert est.trace == pytest.approx(float(np.trace(oracle)))
    values = np.sort(np.linalg.eigvalsh(oracle))[::-1]
    np.testing.assert_allclose(est.spectrum.numpy()[:2], values[:2], rtol=1e-10)
    by_name = compositional(x, ["b", "d"], feature_names=list("abcde"), rank=1)
    by_mask = compositional(x, mask, rank=1)
    torch.testing.assert_close(by_name.factor @ by_name.factor.T, est.factor @ est.factor.T)
    torch.testing.assert_close(by_mask.factor @ by_mask.factor.T, est.factor @ est.factor.T)


def test_compositional_selects_whole_tokens() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(100, 4, 3, generator=g, dtype=torch.float64)  # 4 tokens of 3 coordinates
    est = compositional(x, [2], rank=2)
    basis = est.basis().reshape(4, 3, 2)
    assert float(basis[[0, 1, 3]].abs().max()) < 1e-12  # nothing outside token 2
    assert est.counts == {"n_samples": 100, "n_coordinates": 1, "n_selected_dims": 3}


def test_compositional_recovers_planted_subspace_better_with_more_data() -> None:
    d, nuisance = 8, [5, 6, 7]
    b = torch.zeros(d, 2, dtype=torch.float64)
    b[5:, :] = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]], dtype=torch.float64)

    def angle(n: int) -> float:
        total = 0.0
        for s in range(3):
            g = torch.Generator().manual_seed(s)
            content = torch.zeros(n, d, dtype=torch.float64)
            content[:, :5] = 4 * torch.randn(n, 5, generator=g, dtype=torch.float64)
            noise = torch.zeros(n, d, dtype=torch.float64)
            noise[:, 5:] = 0.4 * torch.randn(n, 3, generator=g, dtype=torch.float64)
            x = content + torch.randn(n, 2, generator=g, dtype=torch.float64) @ b.T + noise
            total += _angle(compositional(x, nuisance, rank=2).basis(), b)
        return total / 3

    small, large = angle(10), angle(3000)
    assert large < small
    assert large < 0.1


def test_compositional_errors_name_the_problem() -> None:
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"unknown coordinate name\(s\) \['z'\]; valid names"):
        compositional(x, ["z"], feature_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="out of range"):
        compositional(x, [3])
    with pytest.raises(ValueError, match="empty"):
        compositional(x, [])
    with pytest.raises(ValueError, match="duplicates"):
        compositional(x, [1, 1])
    with pytest.raises(ValueError, match="pass feature_names"):
        compositional(x, ["a"])
    with pytest.raises(ValueError, match="selects nothing"):
        compositional(x, [False, False, False])


# ------------------------------------------------------------------------------------------------------ D6


def test_temporal_is_the_uncentred_moment_of_successive_differences() -> None:
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randn(t, 4, generator=g, dtype=torch.float64).cumsum(0) + 1.0 for t in (5, 9, 2)]
    deltas = torch.cat([s[1:] - s[:-1] for s in seqs])
    oracle = deltas.T @ deltas / deltas.shape[0]
    est = temporal(seqs, rank=3, floor="residual")
    assert est.trace == pytest.approx(float(oracle.trace()))
    torch.testing.assert_close(est.spectrum, torch.linalg.eigvalsh(oracle).flip(0))
    assert est.counts == {"n_sequences": 3, "n_differences": 13}
    lag2 = temporal(seqs[:2], lag=2, rank=1)
    assert lag2.counts["n_differences"] == 3 + 7
    with pytest.raises(ValueError, match="at least lag \\+ 1 steps"):
        temporal(seqs, lag=2)
    with pytest.raises(ValueError, match="same per-step shape"):
        temporal([torch.randn(3, 4), torch.randn(3, 5)])


def test_temporal_recovers_planted_drift_subspace_better_with_more_data() -> None:
    d = 9
    b, _ = torch.linalg.qr(torch.randn(d, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64))

    def angle(n_seq: int) -> float:
        total = 0.0
        for s in range(3):
            g = torch.Generator().manual_seed(s)
            start = 5 * torch.randn(n_seq, 1, d, generator=g, dtype=torch.float64)
            steps = torch.randn(n_seq, 20, 2, generator=g, dtype=torch.float64) @ b.T
            steps = steps + 0.3 * torch.randn(n_seq, 20, d, generator=g, dtype=torch.float64)
            total += _angle(temporal(start + steps.cumsum(1), rank=2).basis(), b)
        return total / 3

    small, large = angle(1), angle(200)
    assert large < small
    assert large < 0.1
