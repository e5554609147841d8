import json

import pytest
from typer.testing import CliRunner

from shiftlab.cli import app
from shiftlab.pmh._verdict import EXIT_CODES

runner = CliRunner()


@pytest.mark.slow
def test_try_quick_json_reports_every_arm_seed_ci_and_the_verdict(tmp_path) -> None:
    result = runner.invoke(app, ["try", "--quick", "--json", "--report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    arms = {row["arm"] for row in payload["arms_table"]}
    assert {"baseline", "matched", "isotropic", "wrong", "target_rows", "coral"} <= arms
    assert payload["seeds"] == [0, 1, 2]
    pairs = {c["other"]: c for c in payload["verdict"]["comparisons"]}
    assert {"baseline", "isotropic", "wrong"} <= set(pairs)
    assert all(c["ci_low"] <= c["difference"] <= c["ci_high"] for c in pairs.values())
    assert payload["verdict"]["verdict"] in EXIT_CODES
    assert payload["applicability"] == "go"
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--metric", "f1"], "unknown metric"), (["--margin", "-0.5"], "margin must be")],
)
def test_try_rejects_a_bad_metric_or_margin_before_training(tmp_path, args, message) -> None:
    result = runner.invoke(app, ["try", "--quick", "--report", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "report.json").exists()
