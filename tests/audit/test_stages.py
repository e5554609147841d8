"""The protocol stages over runs tables (planted truth), the runs table itself, and the report's faces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shiftlab.audit import (
    MBEConfig,
    RunsTable,
    Verdict,
    acid_test,
    architecture_harness,
    audit_runs,
    baseline_control,
    init_probe,
    read_runs_csv,
)

FAST = MBEConfig(n_boot=400)


def _grid(rng: np.random.Generator, tracks_noise: bool) -> dict[str, np.ndarray]:
    """Width x label noise x seed; accuracy rises with width and falls with noise."""
    width = np.tile(np.repeat([16.0, 64.0, 256.0], 4), 3)
    noise = np.repeat([0.0, 0.2, 0.4], 12)
    acc = 0.6 + 0.05 * np.log2(width / 16) - 0.5 * noise + 0.01 * rng.normal(size=36)
    # a metric that tracks generalisation falls with width and rises with noise (direction -)
    seed = np.tile(np.arange(4), 9)
    if tracks_noise:
        metric = -np.log2(width) + 20 * noise + 0.1 * rng.normal(size=36)
    else:  # a jitter balanced across noise levels: exactly no association with noise
        metric = -np.log2(width) + 0.01 * (seed - 1.5)
    return {"width": width, "noise": noise, "acc": acc, "m": metric, "seed": seed}


def test_acid_test_passes_when_every_driver_moves_both(rng: np.random.Generator) -> None:
    report = acid_test(_grid(rng, True), "m", "acc", ["width", "noise"], expected_sign=-1, config=FAST)
    assert report.passed, report.rows
    assert [row[0] for row in report.rows] == ["width", "noise"]
    assert {row[3] for row in report.rows} == {"-"}


def test_acid_test_fails_when_a_driver_leaves_the_metric_still(rng: np.random.Generator) -> None:
    report = acid_test(_grid(rng, False), "m", "acc", ["width", "noise"], config=FAST)
    assert report.passed is False
    noise_row = next(row for row in report.rows if row[0] == "noise")
    assert noise_row[4] == "FAIL: the metric does not move"
    assert "does not under: noise" in report.summary
    wrong_sign = acid_test(_grid(rng, True), "m", "acc", ["width", "noise"], expected_sign=1, config=FAST)
    assert wrong_sign.passed is False


def test_acid_test_is_undecided_when_no_driver_moves_the_target(rng: np.random.Generator) -> None:
    runs = _grid(rng, True)
    runs["acc"] = rng.normal(size=36)  # accuracy unrelated to the grid
    report = acid_test(runs, "m", "acc", ["width", "noise"], config=FAST)
    assert report.passed is None
    assert all(row[4] == "uninformative: the target does not move" for row in report.rows)
    assert "UNDECIDED" in report.headline()


def test_architecture_harness(rng: np.random.Generator) -> None:
    good = _grid(rng, True)
    other = _grid(rng, True)
    other["m"] = -other["m"]  # this architecture reverses the relation
    runs = {k: np.concatenate([good[k], good[k], other[k]]) for k in good}
    runs["arch"] = np.repeat(["bn", "ln", "plain"], 36)
    report = architecture_harness(runs, "m", "acc", ["width", "noise"], "arch", config=FAST)
    assert report.passed is False
    assert [row[0] for row in report.rows] == ["bn", "ln", "plain"]
    consistent = {k: np.concatenate([good[k], good[k]]) for k in good}
    consistent["arch"] = np.repeat(["bn", "ln"], 36)
    assert architecture_harness(consistent, "m", "acc", ["width", "noise"], "arch", config=FAST).passed


def test_init_probe(rng: np.random.Generator) -> None:
    n = 60
    loss0 = np.log(10) + 0.002 * rng.normal(size=n)
    quality = rng.normal(size=n)
    runs = {
        "loss0": loss0,
        "acc": quality + 0.3 * rng.normal(size=n),
        "m0": quality + 0.3 * rng.normal(size=n),
    }
    report = init_probe(runs, "m0", "acc", "loss0", config=FAST)
    assert report.passed and "predicts" in report.summary
    runs["m0"] = rng.normal(size=n)
    assert init_probe(runs, "m0", "acc", "loss0", config=FAST).passed is False


def test_audit_runs_from_csv_with_units_groups_and_a_categorical_baseline(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 60
    loss = rng.normal(size=n)
    arch = np.tile(["bn", "ln"], n // 2)
    acc = -loss + rng.normal(size=n)
    lines = ["seed,arch,val_loss,acc,m"] + [
        f"{(i // 2) % 6},{arch[i]},{loss[i]:.6f},{acc[i]:.6f},{loss[i] + rng.normal():.6f}" for i in range(n)
    ]
    path = tmp_path / "runs.csv"
    path.write_text("\n".join(lines) + "\n")
    report = audit_runs(path, ["m"], "acc", ["val_loss", "arch"], group="arch", unit="seed", config=FAST)
    assert {r.group for r in report.results} == {"all", "arch=bn", "arch=ln"}
    assert report.verdict("m").controls == ("val_loss", "arch")
    assert report.verdict("m", "arch=bn").dropped_controls == ("arch",)
    assert "6 units" in report.verdict("m").inference
    assert baseline_control(path, "m", "acc", "val_loss", config=FAST).verdict("m").verdict in set(Verdict)


def test_audit_runs_rejects_unknown_columns_and_labels(rng: np.random.Generator) -> None:
    runs = {"val_loss": rng.normal(size=10), "acc": rng.normal(size=10), "arch": ["a", "b"] * 5}
    with pytest.raises(ValueError, match=r"unknown column 'fim'.*val_loss, acc, arch"):
        audit_runs(runs, "fim", "acc", "val_loss", config=FAST)
    with pytest.raises(ValueError, match="must be numeric"):
        audit_runs(runs, "arch", "acc", "val_loss", config=FAST)


def test_read_runs_csv(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    path.write_text("seed,arch,acc,lr\n0,mlp,0.9,\n1,bn,0.8,0.1\n\n")
    table = read_runs_csv(path)
    assert table.names == ("seed", "arch", "acc", "lr") and table.n == 2
    assert table.is_numeric("seed") and not table.is_numeric("arch")
    assert np.isnan(table.numeric("lr")[0])
    assert table.labels("seed").tolist() == ["0", "1"]
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3: 1 cells, expected 2"):
        read_runs_csv(tmp_path / "bad.csv")
    (tmp_path / "dup.csv").write_text("a,a\n1,2\n")
    with pytest.raises(ValueError, match="duplicate"):
        read_runs_csv(tmp_path / "dup.csv")
    with pytest.raises(ValueError, match="does not exist"):
        read_runs_csv(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="same number of rows"):
        RunsTable.from_mapping({"a": [1, 2], "b": [1]})


def test_missing_values_in_a_used_column_raise(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    rows = [f"{i},{i * 0.1},{(i * 7) % 5}" for i in range(12)]
    rows[3] = "3,,1"
    path.write_text("m,acc,val_loss\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="non-finite"):
        audit_runs(path, "m", "acc", "val_loss", config=FAST)


def test_report_faces(rng: np.random.Generator, tmp_path: Path) -> None:
    loss = rng.normal(size=80)
    runs = {
        "val_loss": loss,
        "acc": -loss + rng.normal(size=80),
        "a": rng.normal(size=80),
        "b": loss + rng.normal(size=80),
    }
    report = audit_runs(runs, ["a", "b"], "acc", "val_loss", config=FAST)
    payload = json.loads(report.to_json())
    assert payload["kind"] == "metric_audit" and "plot" not in payload
    assert [r["metric"] for r in payload["results"]] == ["a", "b"]
    assert payload["results"][0]["verdict"] in {"signal", "loss proxy", "inconclusive"}
    assert "a: " in report.headline() and "b: " in report.headline()
    titles = [t.title for t in report.tables()]
    assert titles == ["Verdicts", "Diagnosis", "Sanity controls", "Sanity checks"]
    figures = report.figures()
    assert set(figures) == {"metric vs target", "partial residual plot", "confidence intervals"}
    assert len(figures["partial residual plot"].axes) == 2
    saved = report.save(tmp_path / "out")
    assert json.loads(saved["json"].read_text())["target"] == "acc"
    assert "data:image/png;base64" in saved["html"].read_text()
    with pytest.raises(ValueError, match="no row for metric 'c'"):
        report.verdict("c")
