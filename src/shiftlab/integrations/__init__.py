"""Bridges to the training stacks people already use: Lightning, Hugging Face, torchmetrics, torchrun.

Each submodule needs an optional extra and is imported only when asked for, so ``import
shiftlab.integrations`` pulls in none of them::

    >>> import shiftlab.integrations as integrations
    >>> sorted(integrations.SUBMODULES)
    ['distributed', 'huggingface', 'lightning', 'loggers', 'metrics']

A missing extra raises an ``ImportError`` naming the ``pip install`` line (see
:func:`shiftlab.integrations._optional.require`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Submodule name -> the pip extra it needs (``None``: torch alone).
SUBMODULES: dict[str, str | None] = {
    "distributed": None,
    "huggingface": "hf",
    "lightning": "lightning",
    "loggers": "logging",
    "metrics": "lightning",
}

__all__ = ["SUBMODULES"]


def __getattr__(name: str) -> ModuleType:
    if name not in SUBMODULES:
        raise AttributeError(f"module 'shiftlab.integrations' has no attribute {name!r}")
    module = importlib.import_module(f"shiftlab.integrations.{name}")
    globals()[name] = module
    return module
