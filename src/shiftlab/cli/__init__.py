"""Thin command-line interface; all logic lives in the library."""

from shiftlab.cli._app import app, main

__all__ = ["app", "main"]
