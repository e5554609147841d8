"""shiftlab: how do my model's distributions move, can I trust the numbers, and can I correct the move?

Subpackages are imported lazily on first attribute access so that ``import shiftlab`` stays fast and
has no side effects::

    >>> import shiftlab
    >>> shiftlab.functional.effective_rank  # doctest: +ELLIPSIS
    <function effective_rank at ...>
"""

from __future__ import annotations

import importlib
from typing import Any

from shiftlab._version import __version__

_SUBPACKAGES = (
    "functional",
    "data",
    "report",
    "cli",
    "nn",
    "pmh",
    "topology",
    "audit",
    "generative",
    "integrations",
)
#: Public callables re-exported lazily: name -> defining module.
_LAZY_ATTRIBUTES = {"doctor": "shiftlab._doctor"}

__all__ = ["__version__", *_SUBPACKAGES, *_LAZY_ATTRIBUTES]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        value: Any = importlib.import_module(f"shiftlab.{name}")
    elif name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    else:
        raise AttributeError(f"module 'shiftlab' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
