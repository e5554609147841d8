"""The integrations package imports no framework until asked, and a missing extra names its install line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import shiftlab.integrations as integrations
from shiftlab.integrations._optional import require


def test_importing_the_package_pulls_in_no_framework() -> None:
    code = (
        "import sys, shiftlab.integrations; "
        "heavy = [m for m in ('lightning', 'transformers', 'torchmetrics', 'mlflow', 'tensorboard') "
        "if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_listed_submodule_exists_and_nothing_else() -> None:
    folder = Path(integrations.__file__).parent
    files = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
    assert files == set(integrations.SUBMODULES)


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = integrations.nope


def test_missing_extra_names_the_install_line() -> None:
    with pytest.raises(ImportError, match=r"pip install 'shiftlab\[hf\]'"):
        require("surely_not_installed_pkg.sub", "hf")


def test_a_broken_dependency_inside_an_installed_module_is_not_masked(tmp_path, monkeypatch) -> None:
    (tmp_path / "half_installed.py").write_text("import surely_not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="surely_not_installed_dependency"):
        require("half_installed", "hf")
