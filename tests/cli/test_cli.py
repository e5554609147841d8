import json
import subprocess
import sys

from typer.testing import CliRunner

from shiftlab import __version__
from shiftlab.cli import app

runner = CliRunner()

DATA_MD_ENTRIES = {"digits", "mnist", "mnist-5k", "fashion-mnist", "cifar10"}


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"shiftlab {__version__}"


def test_help_lists_doctor() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "doctor" in result.output


def test_doctor_json_lists_every_dataset_with_availability() -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["kind"] == "doctor"
    entries = {d["name"]: d for d in payload["datasets"]}
    assert set(entries) >= DATA_MD_ENTRIES
    for entry in entries.values():
        assert isinstance(entry["available"], bool)
        assert entry["install"]
    # digits ships with scikit-learn, a core dependency, so it is always available.
    assert entries["digits"]["available"] is True
    assert payload["packages"]["torch"]


def test_doctor_console_and_saved_report(tmp_path) -> None:
    result = runner.invoke(app, ["doctor", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "data sets available" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["kind"] == "doctor"


def test_import_has_no_side_effects_and_loads_no_subpackage() -> None:
    code = (
        "import sys, shiftlab; "
        "mods = sorted(m for m in sys.modules if m.startswith('shiftlab')); print(mods); "
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, mods"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['shiftlab', 'shiftlab._version']"
    assert out.stderr == ""
