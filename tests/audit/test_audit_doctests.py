"""Every docstring example in shiftlab.audit runs, and every public function has one."""

from __future__ import annotations

import doctest
import importlib

import pytest

import shiftlab.audit

MODULES = ["_config", "_evaluator", "_fim", "_report", "_sci", "_stages", "_table", "_verdict"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"shiftlab.audit.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_every_public_function_has_an_example() -> None:
    for name in shiftlab.audit.__all__:
        obj = getattr(shiftlab.audit, name)
        if callable(obj) and not isinstance(obj, type):
            assert obj.__doc__ is not None and ">>>" in obj.__doc__, name
