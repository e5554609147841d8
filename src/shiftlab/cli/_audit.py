"""``shiftlab audit RUNS.csv``: parse options, run :func:`shiftlab.audit.audit_runs`, render the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shiftlab.cli._output import emit

__all__ = ["audit_app"]

audit_app = typer.Typer(
    help="Is a training metric real signal, or a disguised loss proxy? (Marginal Baseline Eval)",
    # Options may follow the RUNS.csv argument, as in `shiftlab audit runs.csv --metrics a`.
    context_settings={"allow_interspersed_args": True},
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _names(text: str, option: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise typer.BadParameter("give at least one column name, comma-separated", param_hint=option)
    return names


@audit_app.callback(invoke_without_command=True)
def audit(
    runs: Annotated[Path, typer.Argument(help="CSV with one row per training run and a header row.")],
    metrics: Annotated[str, typer.Option(help="Metric column(s) to audit, comma-separated.")],
    target: Annotated[str, typer.Option(help="Target column, e.g. final test accuracy.")],
    baselines: Annotated[
        str,
        typer.Option(help="Baseline column(s), comma-separated; label columns become categorical controls."),
    ],
    group: Annotated[str | None, typer.Option(help="Also audit within each level of this column.")] = None,
    unit: Annotated[
        str | None,
        typer.Option(help="Inference-unit column (e.g. seed): runs of one unit are resampled together."),
    ] = None,
    block_size: Annotated[
        int | None,
        typer.Option(help="Rows are steps of one training log: resample blocks of this many steps."),
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    delta: Annotated[float, typer.Option(help="Equivalence margin for the partial correlation.")] = 0.1,
    alpha: Annotated[
        float, typer.Option(help="Level of intervals and tests; FDR across metrics x groups.")
    ] = 0.05,
    method: Annotated[str, typer.Option(help="spearman or pearson.")] = "spearman",
    nuisance: Annotated[str, typer.Option(help="linear or kernel_ridge (cross-fitted).")] = "linear",
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    report: Annotated[
        Path | None, typer.Option(help="Also save report.json and report.html (figures) here.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress display.")] = False,
) -> None:
    """Audit metrics against a target given baselines: signal, loss proxy or inconclusive, with CIs."""
    from shiftlab.audit import MBEConfig, audit_runs

    try:
        config = MBEConfig(
            alpha=alpha, delta=delta, n_boot=bootstrap, method=method, nuisance=nuisance, seed=seed
        )
        console = Console(stderr=True, quiet=quiet or json_output)
        with console.status("auditing: bootstrap of raw and partial correlations"):
            result = audit_runs(
                runs,
                _names(metrics, "--metrics"),
                target,
                _names(baselines, "--baselines"),
                group=group,
                unit=unit,
                block_size=block_size,
                config=config,
            )
    except (ValueError, TypeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    emit(result, json_output=json_output, out=report)
