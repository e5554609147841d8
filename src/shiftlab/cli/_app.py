"""The ``shiftlab`` command: parses arguments, calls the library, renders the returned report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shiftlab._version import __version__
from shiftlab.cli._audit import audit_app
from shiftlab.cli._generative import generative_app
from shiftlab.cli._output import emit
from shiftlab.cli._ph import ph_app
from shiftlab.cli._pmh import pmh_app
from shiftlab.cli._try import try_command

app = typer.Typer(
    name="shiftlab",
    help="Train on site A, deploy on site B: measure, audit and correct distribution shift.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(audit_app, name="audit")
app.add_typer(generative_app, name="perturb")
app.add_typer(ph_app, name="ph")
app.add_typer(pmh_app, name="pmh")
app.command("try")(try_command)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"shiftlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """shiftlab command-line interface."""


@app.command()
def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also save report.json and report.html here.")] = None,
) -> None:
    """Versions, CPU/GPU, and which data sets are available (with the command to install each missing one)."""
    from shiftlab._doctor import doctor as run_doctor

    report = run_doctor()
    emit(report, json_output=json_output, out=out)


def main() -> None:
    """Console-script entry point."""
    app()
