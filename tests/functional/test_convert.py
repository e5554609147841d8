"""The input-conversion helper used at every public edge."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from shiftlab.functional import as_tensor


def test_read_only_array_converts_without_warning() -> None:
    arr = np.arange(4.0)
    arr.flags.writeable = False  # what pandas>=3 `.values` and np.broadcast_to hand out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = as_tensor(arr, name="x")
    assert torch.equal(t, torch.arange(4.0, dtype=torch.float64))


def test_non_native_byte_order_is_accepted() -> None:
    swapped = np.arange(3.0).astype(np.dtype(np.float64).newbyteorder())
    assert torch.equal(as_tensor(swapped, name="x"), torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))


def test_integers_promote_and_validation_names_the_argument() -> None:
    assert as_tensor([[1, 2], [3, 4]], name="x").dtype == torch.float64
    with pytest.raises(ValueError, match="foo contains 1 non-finite"):
        as_tensor([1.0, float("nan")], name="foo")
    with pytest.raises(ValueError, match="bar must have 2 dimension"):
        as_tensor([1.0, 2.0], name="bar", ndim=2)
    with pytest.raises(TypeError, match="baz must hold numbers"):
        as_tensor(["a", "b"], name="baz")
