"""Every docstring example of shiftlab.integrations runs, private modules included, and every public
function of the public submodules has one."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import shiftlab.integrations as integrations

#: Public submodules whose own test file already runs their doctests (kept out here to run them once).
TESTED_ELSEWHERE = {
    "distributed": "test_distributed.py",
    "lightning": "test_lightning.py",
    "loggers": "test_loggers.py",
    "metrics": "test_metrics.py",
}
MODULES = ["", *sorted(info.name for info in pkgutil.iter_modules(integrations.__path__))]


def _import(name: str) -> ModuleType:
    """The module ``shiftlab.integrations[.name]``, skipping the test when its optional extra is missing."""
    try:
        return importlib.import_module(f"shiftlab.integrations.{name}" if name else "shiftlab.integrations")
    except ImportError as error:
        if "pip install 'shiftlab[" not in str(error):
            raise
        pytest.skip(str(error))


def test_the_module_list_is_the_package() -> None:
    assert set(TESTED_ELSEWHERE) <= set(MODULES)
    assert {"_hf_features", "_hf_penalty", "_lightning_monitor", "_metrics_h0", "huggingface"} <= set(MODULES)


@pytest.mark.parametrize(
    "name", [m for m in MODULES if m not in TESTED_ELSEWHERE], ids=lambda m: m or "__init__"
)
def test_docstring_examples(name: str) -> None:
    module = _import(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", sorted(integrations.SUBMODULES))
def test_every_public_function_has_an_example(name: str) -> None:
    module = _import(name)
    for public in module.__all__:
        obj = getattr(module, public)
        if inspect.isfunction(obj):
            assert obj.__doc__ is not None and ">>>" in obj.__doc__, f"{name}.{public}"
