"""Every public docstring example in shiftlab.functional runs and gives the documented output."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

import shiftlab
from shiftlab.functional import _convert, fdr, linalg, resampling, spectra, stats, subspaces

MODULES = [linalg, spectra, subspaces, stats, resampling, fdr]


@pytest.mark.parametrize("module", [*MODULES, _convert], ids=lambda m: m.__name__)
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_public_api_is_exported() -> None:
    fn = shiftlab.functional
    for name in fn.__all__:
        assert hasattr(fn, name), name
    assert fn.as_tensor is _convert.as_tensor
    for module in MODULES:
        assert set(module.__all__) <= set(fn.__all__), module.__name__


def test_every_public_function_has_an_example() -> None:
    fn = shiftlab.functional
    for name in fn.__all__:
        obj = getattr(fn, name)
        if callable(obj) and not isinstance(obj, type) and name != "ArrayLike":
            assert obj.__doc__ is not None and ">>>" in obj.__doc__, name
