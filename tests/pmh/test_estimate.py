"""``NuisanceEstimate``: construction from displacement samples, eigengap on the full spectrum, save/load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftlab.pmh import NuisanceEstimate, subspace
from shiftlab.pmh._estimate import choose_rank, from_second_moment_samples


def _estimate(rank: int = 2, *, signal: bool = True, floor: float | str = 0.0) -> NuisanceEstimate:
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(60, 1, 3, 3, generator=g, dtype=torch.float64)
    ys = torch.arange(60) % 3
    xt = xs.flip(0) + 0.5 * torch.randn(60, 1, 3, 3, generator=g, dtype=torch.float64) + 0.3
    est = subspace(xs, ys, xt, ys.flip(0), rank=rank, floor=floor)  # type: ignore[arg-type]
    return est if signal else NuisanceEstimate(**{**est.__dict__, "signal": None})


def test_from_second_moment_samples_matches_the_weighted_uncentred_moment() -> None:
    g = torch.Generator().manual_seed(1)
    deltas = torch.randn(40, 6, generator=g, dtype=torch.float64) + 2.0  # a mean offset that must be kept
    weights = torch.rand(40, generator=g, dtype=torch.float64)
    w = weights / weights.sum()
    oracle = (deltas * w[:, None]).T @ deltas
    values, vectors = torch.linalg.eigh(oracle)
    values, vectors = values.flip(0), vectors.flip(1)
    est = from_second_moment_samples(
        deltas, site="input", shape=(6,), estimator="test", counts={"n": 40}, rank=2, weights=weights
    )
    torch.testing.assert_close(est.spectrum, values)
    torch.testing.assert_close(
        est.factor @ est.factor.T, vectors[:, :2] @ torch.diag(values[:2]) @ vectors[:, :2].T
    )
    residual = from_second_moment_samples(
        deltas, site="input", shape=(6,), estimator="t", counts={}, rank=2, weights=weights, floor="residual"
    )
    assert residual.trace == pytest.approx(float(oracle.trace()))
    assert residual.floor == pytest.approx(float(values[2:].sum()) / 6)


def test_choose_rank_takes_the_smallest_rank_holding_the_energy() -> None:
    assert choose_rank(torch.tensor([5.0, 3.0, 1.0, 1.0]), energy=0.75) == 2
    assert choose_rank(torch.tensor([5.0, 3.0, 1.0, 1.0]), energy=0.95) == 3  # capped at len - 1
    assert choose_rank(torch.tensor([9.0, 0.5, 0.5]), energy=0.9) == 1
    with pytest.raises(ValueError, match="zero"):
        choose_rank(torch.zeros(3))


def test_eigengap_is_computed_on_the_untruncated_spectrum() -> None:
    est = _estimate(rank=2)
    assert est.spectrum.numel() == 9 and est.rank == 2
    full = est.spectrum
    gap = est.eigengap()
    assert gap.rank == 2
    assert gap.absolute == pytest.approx(float(full[1] - full[2]))
    assert gap.relative == pytest.approx(float((full[1] - full[2]) / full[1]))
    truncated = est.truncate(1)
    assert truncated.spectrum.numel() == 9  # truncating the factor keeps the spectrum
    assert truncated.eigengap().relative == pytest.approx(float((full[0] - full[1]) / full[0]))


def test_save_load_round_trip(tmp_path: Path) -> None:
    for signal in (True, False):
        est = _estimate(signal=signal, floor="residual")
        out = est.save(tmp_path / f"estimate-{signal}")
        back = NuisanceEstimate.load(out)
        torch.testing.assert_close(back.factor, est.factor)
        torch.testing.assert_close(back.spectrum, est.spectrum)
        assert back.floor == est.floor and back.site == est.site and back.shape == est.shape
        assert back.estimator == est.estimator and dict(back.counts) == dict(est.counts)
        if signal:
            assert est.signal is not None and back.signal is not None
            torch.testing.assert_close(back.signal, est.signal)
        else:
            assert back.signal is None
        meta = json.loads((out / "nuisance.json").read_text())
        assert meta["rank"] == est.rank and meta["trace"] == pytest.approx(est.trace)


def test_load_refuses_pickled_arrays_and_unknown_formats(tmp_path: Path) -> None:
    est = _estimate()
    out = est.save(tmp_path / "e")
    np.save(out / "factor.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        NuisanceEstimate.load(out)
    out2 = est.save(tmp_path / "f")
    meta = json.loads((out2 / "nuisance.json").read_text())
    meta["format_version"] = 99
    (out2 / "nuisance.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unsupported nuisance format 99"):
        NuisanceEstimate.load(out2)
    with pytest.raises(FileNotFoundError):
        NuisanceEstimate.load(tmp_path / "missing")


def test_construction_is_validated() -> None:
    est = _estimate()
    fields = dict(est.__dict__)
    with pytest.raises(ValueError, match="factor must have shape"):
        NuisanceEstimate(**{**fields, "factor": torch.zeros(8, 2)})
    with pytest.raises(ValueError, match="non-finite"):
        NuisanceEstimate(**{**fields, "factor": torch.full((9, 2), math.nan)})
    with pytest.raises(ValueError, match="floor must be"):
        NuisanceEstimate(**{**fields, "floor": -1.0})
    with pytest.raises(ValueError, match="Σ would be zero"):
        NuisanceEstimate(**{**fields, "factor": torch.zeros(9, 0), "floor": 0.0})
    with pytest.raises(ValueError, match=r"rank must be an int in 1\.\.2"):
        est.truncate(3)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=30),
    d=st.integers(min_value=2, max_value=8),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_trace_and_covariance_agree(n: int, d: int, seed: int) -> None:
    deltas = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    est = from_second_moment_samples(
        deltas, site="input", shape=(d,), estimator="t", counts={}, rank=1, floor=0.1
    )
    assert est.trace == pytest.approx(float(est.covariance().trace()))
    assert float(torch.linalg.eigvalsh(est.covariance()).min()) >= 0.1 - 1e-9
