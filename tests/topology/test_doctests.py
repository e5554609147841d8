"""Every docstring example in shiftlab.topology runs; every public function and class has one."""

from __future__ import annotations

import doctest
import importlib
import inspect
from types import ModuleType

import pytest

import shiftlab.topology as topology

MODULES = [
    importlib.import_module(f"shiftlab.topology.{name}")
    for name in (
        "_analysis",
        "_attack",
        "_config",
        "_geometry",
        "_layers",
        "_lr",
        "_models",
        "_monitor",
        "_trainer",
    )
]


@pytest.mark.parametrize("module", [topology, *MODULES], ids=lambda m: m.__name__)
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_every_public_function_has_an_example() -> None:
    missing = []
    for name in topology.__all__:
        obj = getattr(topology, name)
        if inspect.isfunction(obj) and ">>>" not in (obj.__doc__ or ""):
            missing.append(name)
    assert not missing
    for cls in (topology.PHMonitor, topology.LayerPHMonitor, topology.PHTrainer, topology.PureFieldNet):
        assert ">>>" in (cls.__doc__ or ""), cls.__name__
