"""Shared fixtures and hypothesis settings for the shiftlab.functional tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Modest, deadline-free property tests keep the whole functional suite fast and stable on CI.
settings.register_profile(
    "shiftlab-functional",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("shiftlab-functional")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)
