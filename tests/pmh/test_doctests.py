"""Every docstring example in shiftlab.pmh runs and gives the printed result."""

import doctest
import importlib
import pkgutil

import pytest

import shiftlab.pmh

MODULES = sorted(
    f"shiftlab.pmh.{info.name}"
    for info in pkgutil.iter_modules(shiftlab.pmh.__path__)
    if info.name.startswith("_")
)


@pytest.mark.parametrize("name", MODULES)
def test_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} example(s) failed in {name}"
