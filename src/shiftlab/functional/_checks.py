"""Private helpers shared by the :mod:`shiftlab.functional` modules (and the capabilities built on
them): argument checks with uniform error messages, and the working dtype and machine epsilon of a
computation.
"""

from __future__ import annotations

import torch


def _check_int(value: object, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int after checking ``low <= value <= high`` (bool is rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}; got {value}")
    return value


def _check_open_unit(value: object, name: str) -> float:
    """Return ``value`` as a float after checking ``0 < value < 1``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float in (0, 1); got {type(value).__name__}")
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1; got {value}")
    return v


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """Half-precision input is computed in float32; float32/float64 keep their dtype."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)
