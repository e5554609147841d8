"""PHMonitor: the exact k-consecutive stop rule, calibration on null data, a planted overfit run."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional

from shiftlab.data import load
from shiftlab.topology import (
    MonitorConfig,
    PHMonitor,
    build_model,
    class_geometry_from_features,
    consecutive_alert_stop,
    split_null_gaps,
)


@pytest.mark.parametrize(
    ("alerts", "patience", "expected"),
    [
        ([], 3, None),
        ([True, True], 3, None),
        ([True, True, True], 3, 2),
        ([True, True, False, True, True, True], 3, 5),
        ([False, True, False, True, False, True], 2, None),
        ([True], 1, 0),
        ([False, False, True], 1, 2),
        ([True, True, True, True, True], 3, 2),
    ],
)
def test_stop_rule_on_scripted_sequences(alerts: list[bool], patience: int, expected: int | None) -> None:
    assert consecutive_alert_stop(alerts, patience) == expected


@given(st.lists(st.booleans(), max_size=30), st.integers(1, 5))
def test_stop_rule_is_first_window_of_k_alerts(alerts: list[bool], k: int) -> None:
    windows = [t for t in range(k - 1, len(alerts)) if all(alerts[t - k + 1 : t + 1])]
    assert consecutive_alert_stop(alerts, k) == (windows[0] if windows else None)


def test_stop_rule_validation() -> None:
    with pytest.raises(ValueError, match="patience"):
        consecutive_alert_stop([True], 0)
    with pytest.raises(TypeError, match="bools"):
        consecutive_alert_stop([1, 1], 1)  # type: ignore[list-item]


def _cloud(gen: torch.Generator, centres: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.arange(n) % centres.shape[0]
    return centres[y] + torch.randn(n, centres.shape[1], generator=gen, dtype=torch.float64), y


def test_monitor_follows_the_stop_rule_on_scripted_gaps() -> None:
    """Train geometry moved by hand: far (alert) or the same distribution (mostly quiet)."""
    gen = torch.Generator().manual_seed(3)
    centres = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 3
    script = [False, True, True, False, True, True, True, True]
    monitor = PHMonitor(MonitorConfig(patience=3, seed=1))
    for planted in script:
        fv, yv = _cloud(gen, centres, 200)
        ft, yt = _cloud(gen, centres * (4.0 if planted else 1.0) + (3.0 if planted else 0.0), 200)
        monitor.update(ft, yt, fv, yv)
    alerts = [s.alert for s in monitor.history]
    assert [a for a, p in zip(alerts, script, strict=True) if p] == [True] * 6  # every planted gap alerts
    stops = [s.stop for s in monitor.history]
    expected = consecutive_alert_stop(alerts, 3)
    assert expected is not None and stops.index(True) == expected
    assert [s.consecutive for s in monitor.history][expected] == 3
    assert monitor.should_stop


def test_alert_is_the_permutation_test_and_floor_the_threshold() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 2
    for seed in range(15):
        ft, yt = _cloud(gen, centres, 100)
        fv, yv = _cloud(gen, centres * (1 + 0.05 * seed), 100)
        step = PHMonitor(MonitorConfig(seed=seed, n_null=99)).update(ft, yt, fv, yv)
        assert step.alert == (step.p_value <= 0.05)
        assert step.alert == (abs(step.gap) > step.noise_floor)
        assert 0 < step.null_mean_abs <= step.noise_floor
        gt = class_geometry_from_features(ft, yt).h0
        assert step.h0_train == pytest.approx(gt) and step.gap == pytest.approx(gt - step.h0_val)


def test_calibration_gives_no_alert_on_one_distribution_at_the_5_percent_level() -> None:
    gen = torch.Generator().manual_seed(11)
    centres = torch.randn(10, 10, generator=gen, dtype=torch.float64) * 2
    repeats = 120
    alerts = 0
    for r in range(repeats):
        ft, yt = _cloud(gen, centres, 300)
        fv, yv = _cloud(gen, centres, 300)
        alerts += PHMonitor(MonitorConfig(seed=r)).update(ft, yt, fv, yv).alert
    # exact level 0.05 under exchangeability; 3 binomial standard deviations of slack
    assert alerts / repeats <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / repeats)


def test_null_draws_keep_class_sizes_and_are_seeded() -> None:
    gen = torch.Generator().manual_seed(5)
    centres = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    ft, yt = _cloud(gen, centres, 60)
    fv, yv = _cloud(gen, centres, 90)
    a = split_null_gaps(ft, yt, fv, yv, n_null=40, seed=7)
    b = split_null_gaps(ft, yt, fv, yv, n_null=40, seed=7)
    c = split_null_gaps(ft, yt, fv, yv, n_null=40, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (40,)
    # two identical sets: every re-split yields the same pair of multisets, up to which side is which
    same = split_null_gaps(ft, yt, ft, yt, n_null=20, mode="samples")
    assert bool((same.abs() < 10).all())
    with pytest.raises(ValueError, match="at least 2 samples in both"):
        split_null_gaps(ft, yt, fv[:4], yv[:4])
    with pytest.raises(ValueError, match="same width"):
        split_null_gaps(ft, yt, fv[:, :2], yv)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"patience": 0}, "patience"),
        ({"n_null": 10}, "n_null >= 19"),
        ({"mode": "median"}, "valid modes"),
    ],
)
def test_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MonitorConfig(**kwargs)  # type: ignore[arg-type]


def test_planted_overfit_run_triggers_alerts_and_a_stop() -> None:
    """A real MLP memorising 8 digits per class: train logits separate, validation ones do not."""
    data = load("digits", "train")
    x, y = data.images, data.labels
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(y.numel(), generator=gen)
    train = torch.cat([perm[y[perm] == c][:8] for c in range(10)])
    val = torch.cat([perm[y[perm] == c][8:38] for c in range(10)])
    net = build_model("mlp", (1, 8, 8), 10, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    monitor = PHMonitor(MonitorConfig(patience=3))
    train_acc = 0.0
    for _ in range(25):
        net.train()
        for idx in train[torch.randperm(train.numel(), generator=gen)].split(32):
            opt.zero_grad()
            functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            ft, fv = net(x[train]), net(x[val])
        train_acc = float((ft.argmax(1) == y[train]).float().mean())
        monitor.update(ft, y[train], fv, y[val])
    assert train_acc == 1.0
    assert sum(s.alert for s in monitor.history[-10:]) >= 8
    assert monitor.should_stop
    assert all(s.gap > 0 for s in monitor.history[-10:])  # memorised classes sit farther apart
