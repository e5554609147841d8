"""Single source of the package version (read from installed metadata when available)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("shiftlab")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
