"""`shiftlab audit RUNS.csv ...` end to end, through the sub-app registered the way _app.py will."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from shiftlab.cli._audit import audit_app

runner = CliRunner()


@pytest.fixture
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """A stand-in for the shiftlab root command."""

    root.add_typer(audit_app, name="audit")
    return root


@pytest.fixture
def runs_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 40
    loss = rng.normal(size=n)
    acc = -loss + rng.normal(size=n)
    lines = ["seed,arch,val_loss,acc,m"] + [
        f"{i % 5},{'ab'[i % 2]},{loss[i]:.6f},{acc[i]:.6f},{rng.normal():.6f}" for i in range(n)
    ]
    path = tmp_path / "runs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_json_output(app: typer.Typer, runs_csv: Path) -> None:
    args = ["audit", str(runs_csv), "--metrics", "m", "--target", "acc", "--baselines", "val_loss,arch"]
    result = runner.invoke(app, [*args, "--unit", "seed", "--bootstrap", "300", "--delta", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["kind"] == "metric_audit"
    assert payload["config"]["delta"] == 0.2 and payload["config"]["n_boot"] == 300
    assert payload["results"][0]["controls"] == ["val_loss", "arch"]
    assert "5 units" in payload["results"][0]["inference"]


def test_console_and_report(app: typer.Typer, runs_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["audit", str(runs_csv), "--metrics", "m", "--target", "acc", "--baselines", "val_loss"]
    result = runner.invoke(
        app, [*args, "--group", "arch", "--bootstrap", "300", "--report", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert "metric audit of acc" in result.output and "Verdicts" in result.output
    assert json.loads((out / "report.json").read_text())["results"][1]["group"] == "arch=a"
    assert (out / "report.html").read_text().count("data:image/png") == 3


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--metrics", "nope", "--target", "acc", "--baselines", "val_loss"], "unknown column 'nope'"),
        (["--metrics", "m", "--target", "acc", "--baselines", "val_loss", "--delta", "2"], "delta"),
        (["--metrics", "m", "--target", "acc", "--baselines", "val_loss", "--method", "kendall"], "method"),
    ],
)
def test_errors_exit_2_with_a_message(app: typer.Typer, runs_csv: Path, extra: list[str], match: str) -> None:
    result = runner.invoke(app, ["audit", str(runs_csv), *extra])
    assert result.exit_code == 2
    assert match in result.output


def test_missing_file(app: typer.Typer, tmp_path: Path) -> None:
    args = ["audit", str(tmp_path / "none.csv"), "--metrics", "m", "--target", "acc", "--baselines", "b"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "does not exist" in result.output
