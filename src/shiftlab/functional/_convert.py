"""The one conversion helper at the public edge: numpy / sequences / tensors in, validated tensors out.

Every public function of :mod:`shiftlab.functional` passes its array arguments through :func:`as_tensor`
so that bad input fails here, with a message that names the argument, before any work starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_tensor(
    x: ArrayLike,
    *,
    name: str,
    ndim: int | tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    min_rows: int | None = None,
    finite: bool = True,
) -> torch.Tensor:
    """Convert ``x`` to a tensor and validate it.

    Parameters
    ----------
    x
        A ``torch.Tensor``, ``numpy.ndarray`` or nested sequence of numbers. Tensors keep their device;
        the caller's object is never modified (a dtype change returns a new tensor).
    name
        The argument name, used in error messages.
    ndim
        Required number of dimensions (an int or a tuple of allowed values).
    dtype
        Cast to this dtype. If ``None``, integer and boolean input is promoted to ``float64`` when it came
        from numpy/sequences, float tensors keep their dtype.
    min_rows
        Minimum size of the first dimension.
    finite
        Reject NaN and infinite values.

    Returns
    -------
    torch.Tensor

    Raises
    ------
    TypeError
        If ``x`` is not array-like or holds non-numeric data.
    ValueError
        If the shape, row count or finiteness check fails.

    Examples
    --------
    >>> as_tensor([[1, 2], [3, 4]], name="x", ndim=2).dtype
    torch.float64
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray | Sequence) and not isinstance(x, str | bytes):
        arr = np.asarray(x)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
        ):
            raise TypeError(f"{name} must hold numbers; got numpy dtype {arr.dtype}")
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))  # torch only reads native byte order
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:
            # e.g. pandas>=3 `.values`, np.broadcast_to, read-only memmaps: torch warns on (and cannot
            # protect) non-writable memory, so copy
            arr = arr.copy()
        t = torch.from_numpy(arr)
    else:
        raise TypeError(f"{name} must be a torch.Tensor, numpy array or sequence; got {type(x).__name__}")

    if t.is_complex():
        raise TypeError(f"{name} must be real-valued; got complex dtype {t.dtype}")
    if dtype is not None:
        t = t.to(dtype)
    elif t.dtype not in _FLOAT_DTYPES:
        t = t.to(torch.float64)

    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if t.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimension(s); got shape {tuple(t.shape)}")
    if min_rows is not None and (t.ndim == 0 or t.shape[0] < min_rows):
        got = 0 if t.ndim == 0 else t.shape[0]
        raise ValueError(f"{name} needs at least {min_rows} rows; got {got}")
    if finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or inf); clean or impute them first"
        )
    return t
