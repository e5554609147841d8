"""Import an optional dependency or fail with the install line that fixes it."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise an ``ImportError`` that names the shiftlab extra providing it.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"lightning.pytorch"``.
    extra : str
        The ``pyproject`` extra that installs it, e.g. ``"lightning"``.

    Returns
    -------
    types.ModuleType
        The imported module.

    Raises
    ------
    ImportError
        When ``module`` is not installed; the message gives ``pip install 'shiftlab[extra]'``.

    Examples
    --------
    >>> require("math", "none").sqrt(4.0)
    2.0
    >>> require("no_such_module_xyz", "lightning")
    Traceback (most recent call last):
    ...
    ImportError: no_such_module_xyz is needed here; install it with: pip install 'shiftlab[lightning]'
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or not module.startswith(error.name.split(".")[0]):
            raise
        raise ImportError(
            f"{module} is needed here; install it with: pip install 'shiftlab[{extra}]'"
        ) from error
