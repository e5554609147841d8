"""Integration on real training runs: small MLPs on UCI digits with varied capacity and label noise."""

from __future__ import annotations

import numpy as np

from shiftlab.audit import MBEConfig, Verdict, acid_test, audit_runs, init_probe


def test_runs_are_real_and_label_noise_hurts(digit_runs: dict[str, np.ndarray]) -> None:
    acc, noise = digit_runs["test_acc"], digit_runs["label_noise"]
    assert acc.shape == (12,)
    assert acc[noise == 0].mean() > acc[noise > 0].mean() + 0.03
    assert np.all((digit_runs["fim_norm"] > 1 / 48) & (digit_runs["fim_norm"] <= 1))


def test_stages_run_on_real_runs(digit_runs: dict[str, np.ndarray]) -> None:
    cfg = MBEConfig(n_boot=400)
    acid = acid_test(digit_runs, "fim_norm", "test_acc", ["width", "label_noise"], config=cfg)
    noise_row = next(row for row in acid.rows if row[0] == "label_noise")
    assert noise_row[1].startswith("-")  # label noise lowers test accuracy, and the interval says so
    report = audit_runs(digit_runs, "fim_norm", "test_acc", "early_val_loss", config=cfg)
    assert report.verdict("fim_norm").n == 12
    assert report.verdict("random metric").verdict is not Verdict.SIGNAL
    probe = init_probe(digit_runs, "fim_norm_early", "test_acc", "early_val_loss", config=cfg)
    assert probe.passed in (True, False)
