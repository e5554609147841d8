"""How every command shows a report: JSON on stdout or a rich rendering, and optionally files on disk."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from shiftlab.report import Report


def emit(report: Report, *, json_output: bool, out: Path | None) -> dict[str, Path] | None:
    """Print ``report`` (JSON or rich); with ``out``, also save ``report.json`` and ``report.html`` there."""
    if json_output:
        typer.echo(report.to_json())
    else:
        report.render(Console())
    return None if out is None else report.save(out)
