import json

import numpy as np
from typer.testing import CliRunner

from shiftlab.cli import app
from shiftlab.pmh._verdict import EXIT_CODES

runner = CliRunner()


def test_route_lists_every_estimator_story() -> None:
    result = runner.invoke(app, ["pmh", "route", "--json"])
    assert result.exit_code == 0, result.output
    stories = json.loads(result.output)["routes"]
    assert {"domain", "isotropic", "augmentation", "compositional", "temporal", "style", "adversarial"} <= {
        s["estimator"] for s in stories
    }


def _write(tmp_path, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    n = 300
    ys, yt = rng.integers(0, 3, n), rng.integers(0, 3, n)
    means = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0]], dtype=float)
    xs = means[ys] + 0.6 * rng.normal(size=(n, 3))
    xt = means[yt] + 0.6 * rng.normal(size=(n, 3)) + np.outer(rng.normal(size=n) * 3, [0, 0, 1])
    paths = []
    for name, arr in (("xs", xs), ("ys", ys), ("xt", xt), ("yt", yt)):
        np.save(tmp_path / f"{name}.npy", arr)
        paths.append(str(tmp_path / f"{name}.npy"))
    return paths


def test_evaluate_json_report_and_gate(tmp_path) -> None:
    xs, ys, xt, yt = _write(tmp_path)
    args = ["pmh", "evaluate", "--source", xs, "--source-labels", ys, "--target", xt, "--target-labels", yt]
    result = runner.invoke(app, [*args, "--rank", "1", "--json", "--report", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert set(payload["deploy_accuracy"]) >= {"baseline", "matched", "isotropic", "wrong"}
    assert payload["verdict"]["verdict"] in EXIT_CODES
    assert (tmp_path / "out" / "report.html").is_file()
    gated = runner.invoke(app, [*args, "--rank", "1", "--gate"])
    assert gated.exit_code == EXIT_CODES[payload["verdict"]["verdict"]]


def test_evaluate_metric_and_margin(tmp_path) -> None:
    xs, ys, xt, yt = _write(tmp_path)
    args = ["pmh", "evaluate", "--source", xs, "--source-labels", ys, "--target", xt, "--target-labels", yt]
    result = runner.invoke(app, [*args, "--rank", "1", "--json", "--metric", "neg_brier", "--margin", "0.02"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["metric"] == "neg_brier" and set(payload["deploy_metric"]) == set(
        payload["deploy_accuracy"]
    )
    bad = runner.invoke(app, [*args, "--metric", "f1"])
    assert bad.exit_code == 2 and "unknown metric" in bad.output


def test_evaluate_rejects_bad_files(tmp_path) -> None:
    xs, ys, xt, yt = _write(tmp_path)
    missing = runner.invoke(
        app,
        [
            "pmh",
            "evaluate",
            "--source",
            "nope.npy",
            "--source-labels",
            ys,
            "--target",
            xt,
            "--target-labels",
            yt,
        ],
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output
    np.save(tmp_path / "short.npy", np.zeros((10, 2)))
    bad = runner.invoke(
        app,
        [
            "pmh",
            "evaluate",
            "--source",
            xs,
            "--source-labels",
            ys,
            "--target",
            str(tmp_path / "short.npy"),
            "--target-labels",
            yt,
        ],
    )
    assert bad.exit_code == 1 and "error:" in bad.output
