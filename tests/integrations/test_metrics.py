"""torchmetrics adapters: H0Gap and NuisanceSensitivity against oracles, and synced over 2 gloo processes."""

from __future__ import annotations

import doctest
import json
import math
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("torchmetrics", reason="needs the lightning extra: pip install 'shiftlab[lightning]'")

import shiftlab.integrations.metrics as metrics_module
from shiftlab.data import load
from shiftlab.integrations.metrics import (
    H0Gap,
    NuisanceSensitivity,
    class_sums,
    h0_gap_from_sums,
    nuisance_energies,
    sensitivity_from_energies,
)
from shiftlab.pmh import NuisanceEstimate, sensitivity_ratio
from shiftlab.topology import class_geometry_from_features

ROOT = Path(__file__).resolve().parents[2]
#: Unequal shards, so a mean-reduced or rank-local state would give a different value.
TRAIN_SPLIT, VAL_SPLIT, SENS_SPLIT = 230, 90, 37


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models on a shared, loaded CPU: a second intra-op thread only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _estimate(seed: int = 0, rank: int = 4) -> NuisanceEstimate:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(64, rank, generator=gen))
    scales = torch.linspace(1.0, 0.4, rank)
    spectrum = torch.cat([scales**2, torch.full((4,), 0.01)])
    return NuisanceEstimate(q * scales, 0.0, spectrum, "input", (1, 8, 8), "test", {})


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def _digits_features() -> dict[str, torch.Tensor]:
    """Real digits: a fixed random network's logits as features; train 500 / validation 300 rows."""
    data = load("digits", "train")
    x, y = data.images[:800], data.labels[:800]
    with torch.no_grad():
        f = _net(1)(x).double()
    return {"x": x, "ft": f[:500], "yt": y[:500], "fv": f[500:], "yv": y[500:]}


def _fill(gap: H0Gap, d: dict[str, torch.Tensor], train: slice, val: slice, chunk: int = 64) -> None:
    for part, rows in (("train", train), ("val", val)):
        f, y = d["f" + part[0]][rows], d["y" + part[0]][rows]
        for start in range(0, y.numel(), chunk):
            gap.update(f[start : start + chunk], y[start : start + chunk], split=part)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------- H0Gap


@pytest.mark.parametrize("mode", ["centroid", "samples"])
def test_h0_gap_equals_class_geometry_on_all_the_data(mode: str) -> None:
    d = _digits_features()
    gap = H0Gap(10, 10, mode=mode)  # type: ignore[arg-type]
    _fill(gap, d, slice(None), slice(None))
    h0_train = class_geometry_from_features(d["ft"], d["yt"], mode=mode).h0  # type: ignore[arg-type]
    h0_val = class_geometry_from_features(d["fv"], d["yv"], mode=mode).h0  # type: ignore[arg-type]
    assert float(gap.compute()) == pytest.approx(h0_train - h0_val, rel=1e-10, abs=1e-12)
    assert abs(h0_train - h0_val) > 1e-3  # not a trivially zero gap


def test_planted_train_separation_gives_a_positive_gap() -> None:
    """Validation class means share a common offset (angles between classes shrink): h0_val < h0_train."""
    gen = torch.Generator().manual_seed(0)
    centres = 3 * torch.eye(5, 8, dtype=torch.float64)
    y = torch.arange(400) % 5
    noise = torch.randn(2, 400, 8, generator=gen, dtype=torch.float64)
    gap = H0Gap(5, 8)
    gap.update(centres[y] + noise[0], y, split="train")
    gap.update(centres[y] + 4.0 + noise[1], y, split="val")
    assert float(gap.compute()) > 0.5


@settings(max_examples=15, deadline=None)
@given(st.permutations(list(range(4))), st.integers(1, 40))
def test_gap_ignores_class_names_and_batching(perm: list[int], chunk: int) -> None:
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(120, 6, generator=gen, dtype=torch.float64) + 2 * torch.eye(6)[torch.arange(120) % 4]
    y = torch.arange(120) % 4
    d = {"ft": f[:60], "yt": y[:60], "fv": f[60:], "yv": y[60:]}
    relabelled = dict(d, yt=torch.tensor(perm)[d["yt"]], yv=torch.tensor(perm)[d["yv"]])
    whole, split = H0Gap(4, 6), H0Gap(4, 6)
    _fill(whole, d, slice(None), slice(None), chunk=120)
    _fill(split, relabelled, slice(None), slice(None), chunk=chunk)
    assert float(split.compute()) == pytest.approx(float(whole.compute()), rel=1e-12, abs=1e-14)


def test_functional_twins_agree_with_the_class() -> None:
    d = _digits_features()
    ts, tc = class_sums(d["ft"], d["yt"], 10)
    vs, vc = class_sums(d["fv"], d["yv"], 10)
    parts = h0_gap_from_sums(ts, tc, vs, vc)
    gap = H0Gap(10, 10)
    _fill(gap, d, slice(None), slice(None))
    assert float(parts.gap) == pytest.approx(float(gap.compute()), rel=1e-12)
    assert float(parts.h0_train) == pytest.approx(
        class_geometry_from_features(d["ft"], d["yt"]).h0, rel=1e-10
    )


def test_h0_gap_rejects_bad_input() -> None:
    gap = H0Gap(3, 2)
    f, y = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        gap.update(torch.randn(6, 3), y, split="train")
    with pytest.raises(ValueError, match="valid splits: train, val"):
        gap.update(f, y, split="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        gap.update(f, y + 1, split="train")
    with pytest.raises(TypeError, match="integer tensor"):
        gap.update(f, y.float(), split="train")
    with pytest.raises(ValueError, match=r"non-finite|NaN|infinite"):
        gap.update(torch.full((6, 2), math.nan), y, split="train")
    with pytest.raises(ValueError, match="zero feature vectors"):
        H0Gap(3, 2, mode="samples").update(torch.zeros(6, 2), y, split="val")
    gap.update(f, y, split="train")
    gap.update(f[:2], y[:2], split="val")
    with pytest.raises(ValueError, match=r"classes \[2\] have no val samples"):
        gap.compute()
    with pytest.raises(ValueError, match="num_classes"):
        H0Gap(1, 2)


# ------------------------------------------------------------------------------- NuisanceSensitivity


def _dense_energies(model: nn.Module, x: torch.Tensor, est: NuisanceEstimate) -> tuple[float, float]:
    """Oracle: the full per-sample Jacobian, then ‖J F‖² and ‖J P⊥‖²."""
    f = est.factor.double()
    basis = est.basis().double()
    perp = torch.eye(est.dim, dtype=torch.float64) - basis @ basis.T
    along = complement = 0.0
    model.eval()
    for row in x:
        jac = torch.autograd.functional.jacobian(lambda v: model(v.reshape(1, *x.shape[1:]))[0], row)
        j = jac.reshape(-1, est.dim).double()
        along += float((j @ f).pow(2).sum())
        complement += float((j @ perp).pow(2).sum())
    return along, complement


def test_energies_equal_the_dense_jacobian_at_the_input() -> None:
    x = load("digits", "train").images[:12]
    net, est = _net(), _estimate()
    before = [p.clone() for p in net.parameters()]
    along, complement = nuisance_energies(net.train(), est, x)
    assert net.training and all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    oracle = _dense_energies(net, x, est)
    assert float(along.sum()) == pytest.approx(oracle[0], rel=1e-5)
    assert float(complement.sum()) == pytest.approx(oracle[1], rel=1e-5)


def test_update_keeps_each_submodule_train_flag() -> None:
    net = nn.Sequential(_net(), nn.Dropout(0.3))
    net[1].eval()  # a dropout the user froze
    before = [m.training for m in net.modules()]
    NuisanceSensitivity(_estimate()).update(net, load("digits", "train").images[:8])
    assert [m.training for m in net.modules()] == before


def test_energies_at_a_hidden_layer_equal_the_dense_jacobian_of_the_head() -> None:
    x = load("digits", "train").images[:10]
    net = _net()
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(32, 3, generator=gen))
    est = NuisanceEstimate(q, 0.0, torch.tensor([1.0, 1.0, 1.0, 0.1]), "1", (32,), "test", {})
    along, complement = nuisance_energies(net, est, x, measure="3")
    with torch.no_grad():
        hidden = net[1](net[0](x))
    oracle = _dense_energies(nn.Sequential(net[2], net[3]), hidden, est)
    assert float(along.sum()) == pytest.approx(oracle[0], rel=1e-5)
    assert float(complement.sum()) == pytest.approx(oracle[1], rel=1e-5)


def test_ratio_agrees_with_the_pmh_hutchinson_estimate() -> None:
    x = load("digits", "train").images[:64]
    net, est = _net(), _estimate()
    metric = NuisanceSensitivity(est)
    metric.update(net, x[:40])
    metric.update(net, x[40:])
    hutchinson = sensitivity_ratio(net, est, x, n_probes=128, seed=0)
    assert float(metric.compute()) == pytest.approx(hutchinson, rel=0.02)


def test_planted_blind_and_nuisance_only_models() -> None:
    est = _estimate(rank=2)
    basis = est.basis()
    x = torch.randn(8, 1, 8, 8)
    blind = nn.Sequential(nn.Flatten(), nn.Linear(64, 3, bias=False))
    along_only = nn.Sequential(nn.Flatten(), nn.Linear(64, 3, bias=False))
    with torch.no_grad():
        w = torch.randn(3, 64)
        blind[1].weight.copy_(w - (w @ basis) @ basis.T)  # constant along Σ's range
        along_only[1].weight.copy_((w @ basis) @ basis.T)  # constant along the complement
    m = NuisanceSensitivity(est)
    m.update(blind, x)
    assert float(m.compute()) == pytest.approx(0.0, abs=1e-3)
    m = NuisanceSensitivity(est)
    m.update(along_only, x)
    assert float(m.compute()) > 1e3
    assert float(sensitivity_from_energies(torch.tensor(1.0), torch.tensor(0.0), est)) == math.inf


def test_sensitivity_rejects_bad_input() -> None:
    est = _estimate()
    net = _net()
    with pytest.raises(ValueError, match=r"inputs of shape \(1, 8, 8\)"):
        nuisance_energies(net, est, torch.randn(4, 64))
    with pytest.raises(ValueError, match="NaN"):
        nuisance_energies(net, est, torch.full((4, 1, 8, 8), math.nan))
    with pytest.raises(ValueError, match=r"unknown layer 'head'.*valid names: '0', '1'"):
        nuisance_energies(net, est, torch.randn(4, 1, 8, 8), measure="head")
    layer_est = NuisanceEstimate(torch.eye(32)[:, :2], 0.0, torch.ones(3), "3", (32,), "test", {})
    with pytest.raises(ValueError, match="registered after the site"):
        nuisance_energies(net, layer_est, torch.randn(4, 1, 8, 8), measure="1")
    with pytest.raises(RuntimeError, match="inference_mode"), torch.inference_mode():
        nuisance_energies(net, est, torch.randn(4, 1, 8, 8))
    isotropic = NuisanceEstimate(torch.zeros(64, 0), 0.1, torch.ones(1), "input", (1, 8, 8), "iso", {})
    with pytest.raises(ValueError, match="rank 1 <= r < d"):
        NuisanceSensitivity(isotropic)
    with pytest.raises(ValueError, match="before any update"), pytest.warns(UserWarning, match="before the"):
        NuisanceSensitivity(est).compute()


# ------------------------------------------------------------------------------- 2 gloo processes


def _sensitivity_data() -> tuple[nn.Sequential, NuisanceEstimate, torch.Tensor]:
    return _net(), _estimate(), load("digits", "train").images[:100]


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=60),
    )
    try:
        d = _digits_features()
        train = slice(0, TRAIN_SPLIT) if rank == 0 else slice(TRAIN_SPLIT, None)
        val = slice(0, VAL_SPLIT) if rank == 0 else slice(VAL_SPLIT, None)
        synced, local = H0Gap(10, 10), H0Gap(10, 10, sync_on_compute=False)
        samples = H0Gap(10, 10, mode="samples")
        for metric in (synced, local, samples):
            _fill(metric, d, train, val, chunk=50)
        net, est, x = _sensitivity_data()
        rows = x[:SENS_SPLIT] if rank == 0 else x[SENS_SPLIT:]
        sens, sens_local = NuisanceSensitivity(est), NuisanceSensitivity(est, sync_on_compute=False)
        for metric in (sens, sens_local):
            for chunk in rows.split(25):
                metric.update(net, chunk)
        with synced.sync_context(), sens.sync_context():  # the reduced states themselves
            states = {
                "train_sum": synced.train_sum.tolist(),
                "val_count": synced.val_count.tolist(),
                "along": float(sens.along),
                "total": int(sens.total),
            }
        result = {
            "states": states,
            "gap_samples": float(samples.compute()),
            "gap": float(synced.compute()),
            "gap_local": float(local.compute()),
            "sensitivity": float(sens.compute()),
            "sensitivity_local": float(sens_local.compute()),
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_sync_across_two_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # the spawned processes import this module by its package name
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    d = _digits_features()
    single, samples = H0Gap(10, 10), H0Gap(10, 10, mode="samples")
    for metric in (single, samples):
        _fill(metric, d, slice(None), slice(None), chunk=80)
    net, est, x = _sensitivity_data()
    sens = NuisanceSensitivity(est)
    sens.update(net, x)
    for result in ranks:
        states = result["states"]
        reduced = torch.tensor(states["train_sum"], dtype=torch.float64)
        torch.testing.assert_close(reduced, single.train_sum, rtol=1e-12, atol=1e-12)
        assert states["val_count"] == single.val_count.tolist()
        assert (
            states["along"] == pytest.approx(float(sens.along), rel=1e-10) and states["total"] == x.shape[0]
        )
        assert result["gap"] == pytest.approx(float(single.compute()), rel=1e-10, abs=1e-12)
        assert result["gap_samples"] == pytest.approx(float(samples.compute()), rel=1e-10, abs=1e-12)
        assert result["sensitivity"] == pytest.approx(float(sens.compute()), rel=1e-6)
        # the shards alone give other values: the agreement comes from the sync
        assert abs(result["gap_local"] - result["gap"]) > 1e-4
        assert abs(result["sensitivity_local"] - result["sensitivity"]) > 1e-4


def test_docstring_examples() -> None:
    result = doctest.testmod(metrics_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
