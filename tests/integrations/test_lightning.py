"""Lightning: the PH callbacks stop a planted overfit under 2-process DDP (gloo), the PMH penalty trains."""

from __future__ import annotations

import csv
import doctest
import math
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning", reason="needs the lightning extra: pip install 'shiftlab[lightning]'")

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy

import shiftlab.integrations.lightning as lightning_module
from shiftlab.data import load
from shiftlab.integrations.lightning import (
    LayerMonitorCallback,
    PHMonitorCallback,
    PMHLightningModule,
)
from shiftlab.pmh import BudgetSettings, NuisanceEstimate, PMHPenalty
from shiftlab.topology import MonitorConfig, build_model, class_geometry_from_features, consecutive_alert_stop

MAX_EPOCHS = 15
PH_KEYS = ("h0_train", "h0_val", "gap", "noise_floor", "p_value", "alert", "consecutive")
QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models on a shared, loaded CPU: a second intra-op thread only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _estimate() -> NuisanceEstimate:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 4, generator=gen))
    return NuisanceEstimate(q * 0.5, 0.0, torch.tensor([0.25] * 4 + [0.01]), "input", (1, 8, 8), "test", {})


def _planted() -> dict[str, torch.Tensor]:
    """8 training digits per class (memorised within a few epochs), 30 validation digits per class, and
    8 held-out digits per class that training never sees (the probe of the null control)."""
    data = load("digits", "train")
    x, y = data.images, data.labels
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(y.numel(), generator=gen)
    train, val, held = (
        torch.cat([perm[y[perm] == c][a:b] for c in range(10)]) for a, b in ((0, 8), (8, 38), (38, 46))
    )
    return {"xt": x[train], "yt": y[train], "xv": x[val], "yv": y[val], "xh": x[held], "yh": y[held]}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 2-process DDP fit (spawn, gloo): PMH module + PH monitor + layer monitor + CSV logger."""
    d = _planted()
    module = PMHLightningModule(
        build_model("mlp", (1, 8, 8), 10, seed=0),
        _estimate(),
        strength=1.0,
        budget=BudgetSettings(warmup=0.0),
        lr=3e-3,
    )
    ph = PHMonitorCallback((d["xt"], d["yt"]), (d["xv"], d["yv"]), config=MonitorConfig(patience=3))
    layers = LayerMonitorCallback(["net.fc1", "net.fc2", "net.head"], d["xv"][:64])
    save_dir = tmp_path_factory.mktemp("lightning")
    trainer = pl.Trainer(
        max_epochs=MAX_EPOCHS,
        devices=2,
        strategy=DDPStrategy(
            start_method="spawn", process_group_backend="gloo", timeout=timedelta(seconds=120)
        ),
        logger=CSVLogger(save_dir, name="run", version=0),
        callbacks=[ph, layers],
        **QUIET,
    )
    train = DataLoader(TensorDataset(d["xt"], d["yt"]), batch_size=20, shuffle=True)
    val = DataLoader(TensorDataset(d["xv"], d["yv"]), batch_size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on worker counts and CPU DDP
        trainer.fit(module, train, val)
    rows = _read_csv(save_dir / "run" / "version_0" / "metrics.csv")
    return {"module": module, "rows": rows, "data": d}


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key, "") != ""]


def test_ph_callback_stops_a_planted_overfit_under_ddp(ddp_run: dict[str, Any]) -> None:
    rows = ddp_run["rows"]
    alerts = [bool(a) for a in _column(rows, "ph/alert")]
    epochs = len(alerts)
    assert 3 <= epochs < MAX_EPOCHS  # stopped early
    assert consecutive_alert_stop(alerts, 3) == epochs - 1  # ... exactly when the rule fired
    assert _column(rows, "ph/consecutive")[-1] == 3.0
    assert all(g > 0 for g in _column(rows, "ph/gap")[-3:])  # memorised classes sit farther apart
    floors = _column(rows, "ph/noise_floor")
    assert all(abs(g) > f for g, f in zip(_column(rows, "ph/gap")[-3:], floors[-3:], strict=True))


def test_monitor_uses_every_ranks_rows(ddp_run: dict[str, Any]) -> None:
    """The logged H0 is that of the whole probe under the final weights, not of one rank's half."""
    module, rows, d = ddp_run["module"], ddp_run["rows"], ddp_run["data"]
    module.eval()
    with torch.no_grad():
        ft, fv = module(d["xt"]).double(), module(d["xv"]).double()
    h0_train = class_geometry_from_features(ft, d["yt"]).h0
    h0_val = class_geometry_from_features(fv, d["yv"]).h0
    assert _column(rows, "ph/h0_train")[-1] == pytest.approx(h0_train, rel=1e-5)
    assert _column(rows, "ph/h0_val")[-1] == pytest.approx(h0_val, rel=1e-5)
    half = class_geometry_from_features(fv[0::2], d["yv"][0::2]).h0  # what rank 0 alone would see
    assert abs(half - h0_val) > 1e-3


def test_each_metric_is_logged_once_per_epoch(ddp_run: dict[str, Any]) -> None:
    rows = ddp_run["rows"]
    epochs = len(_column(rows, "ph/gap"))
    keys = [f"ph/{k}" for k in PH_KEYS]
    keys += ["layers/state", "layers/constant_layers", "layers/mean_death"]
    keys += ["pmh/task_loss", "pmh/penalty", "pmh/ratio", "val/loss", "val/accuracy"]
    for key in keys:
        assert len(_column(rows, key)) == epochs, key
    logged_epochs = [int(float(row["epoch"])) for row in rows if row.get("ph/gap", "") != ""]
    assert logged_epochs == list(range(epochs))


def test_penalty_and_layer_state_are_logged_under_ddp(ddp_run: dict[str, Any]) -> None:
    rows = ddp_run["rows"]
    assert all(p > 0 for p in _column(rows, "pmh/penalty"))
    # the cap holds; this planted Σ gives λP/L ≈ 0.0006, so the floor (at most 2λ) leaves it under 5 %
    assert all(0 < r <= 0.30 + 1e-6 for r in _column(rows, "pmh/ratio"))
    assert _column(rows, "pmh/task_loss")[-1] < _column(rows, "pmh/task_loss")[0]
    assert set(_column(rows, "layers/state")) <= {0.0, 1.0, 2.0}
    assert all(0 <= m <= 1 for m in _column(rows, "layers/mean_death"))


def test_ph_callback_does_not_stop_when_the_probe_was_never_trained_on() -> None:
    """Null control: the same training, but the 'train' probe is held-out data (exchangeable with val).

    Seeded (global RNG and loader order), so the result does not depend on which tests ran before.
    """
    torch.manual_seed(0)
    d = _planted()
    module = PMHLightningModule(
        build_model("mlp", (1, 8, 8), 10, seed=0), _estimate(), budget=BudgetSettings(warmup=0.0), lr=3e-3
    )
    null = PHMonitorCallback((d["xh"], d["yh"]), (d["xv"], d["yv"]), config=MonitorConfig(patience=3))
    trainer = pl.Trainer(max_epochs=MAX_EPOCHS, devices=1, logger=False, callbacks=[null], **QUIET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        order = torch.Generator().manual_seed(0)
        loader = DataLoader(TensorDataset(d["xt"], d["yt"]), batch_size=20, shuffle=True, generator=order)
        trainer.fit(module, loader)
    history = null.monitor.history
    assert len(history) == MAX_EPOCHS and not trainer.should_stop and not null.monitor.should_stop
    assert sum(step.alert for step in history) <= 3  # about alpha = 5% of epochs


class _GradCapture(pl.Callback):
    def __init__(self) -> None:
        self.grads: list[torch.Tensor] = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self.grads = [p.grad.detach().clone() for p in pl_module.net.parameters()]


def test_penalty_gradient_reaches_the_parameters_inside_lightning() -> None:
    """The step's gradient is the task gradient plus c · ∂P/∂θ with c > 0 and ∂P/∂θ ≠ 0."""
    d = _planted()
    net = build_model("mlp", (1, 8, 8), 10, seed=0)
    est = _estimate()
    module = PMHLightningModule(net, est, strength=1.0, budget=BudgetSettings(warmup=0.0))
    capture = _GradCapture()
    trainer = pl.Trainer(max_steps=1, devices=1, logger=False, callbacks=[capture], **QUIET)
    x, y = d["xt"], d["yt"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=x.shape[0]))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    coefficient = logged["pmh/ratio"] * logged["pmh/task_loss"] / logged["pmh/penalty"]
    assert coefficient > 0
    task_grads = torch.autograd.grad(cross_entropy(net(x), y), list(net.parameters()))
    params = list(net.parameters())
    raw = torch.autograd.grad(PMHPenalty(est)(net, x).value, params, allow_unused=True)
    # the output bias does not move the Jacobian: its penalty gradient is structurally absent
    penalty_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, raw, strict=True)]
    assert sum(float(g.norm()) for g in penalty_grads[:4]) > 0 and all(g is not None for g in raw[:4])
    for seen, task, pen in zip(capture.grads, task_grads, penalty_grads, strict=True):
        torch.testing.assert_close(seen, task + coefficient * pen, rtol=1e-4, atol=1e-6)
    assert net.fc1.weight.grad is None  # the user's model was copied, never trained


def test_callbacks_reject_bad_input() -> None:
    d = _planted()
    with pytest.raises(ValueError, match=r"val needs at least 2 samples of every class 0..9; classes \[9\]"):
        PHMonitorCallback((d["xt"], d["yt"]), (d["xv"][d["yv"] < 9], d["yv"][d["yv"] < 9]))
    with pytest.raises(TypeError, match="integer tensor"):
        PHMonitorCallback((d["xt"], d["yt"].float()), (d["xv"], d["yv"]))
    with pytest.raises(ValueError, match="NaN"):
        PHMonitorCallback((d["xt"] * math.nan, d["yt"]), (d["xv"], d["yv"]))
    with pytest.raises(ValueError, match="differ in shape"):
        PHMonitorCallback((d["xt"], d["yt"]), (d["xv"].flatten(1), d["yv"]))
    module = PMHLightningModule(build_model("mlp", (1, 8, 8), 10, seed=0), _estimate())
    callback = PHMonitorCallback((d["xt"], d["yt"]), (d["xv"], d["yv"]), layer="fc1")
    with pytest.raises(ValueError, match=r"unknown layer 'fc1'; valid layer names: .*net\.fc1"):
        callback.on_fit_start(None, module)  # type: ignore[arg-type]
    layers = LayerMonitorCallback(["net.fc1", "fc2"], d["xv"][:8])
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['fc2'\]"):
        layers.on_fit_start(None, module)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 3 inputs"):
        LayerMonitorCallback(["net.fc1", "net.fc2"], d["xv"][:2])
    with pytest.raises(ValueError, match="strength"):
        PMHLightningModule(build_model("mlp", (1, 8, 8), 10, seed=0), _estimate(), strength=-1.0)


def test_docstring_examples() -> None:
    result = doctest.testmod(lightning_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
