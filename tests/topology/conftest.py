"""Fixtures for the shiftlab.topology tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "shiftlab-topology", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("shiftlab-topology")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Many tiny tensor operations: on a shared, loaded CPU a second intra-op thread only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)
