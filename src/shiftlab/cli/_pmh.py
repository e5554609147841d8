"""``shiftlab pmh ...``: deploy stories and the frozen-feature gate. Parses, calls the library, renders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console

from shiftlab.cli._output import emit

pmh_app = typer.Typer(
    help="Perturbation Matching: deploy stories and the frozen-feature gate.", no_args_is_help=True
)


def _load_npy(path: Path, name: str) -> np.ndarray:
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint=name)
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise typer.BadParameter(f"{path} is not a plain .npy array ({err})", param_hint=name) from err


@pmh_app.command()
def route(
    list_all: Annotated[bool, typer.Option("--list", help="List every deploy story (the default).")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Deploy stories (new site, sensor noise, augmentations, ...) mapped to nuisance estimators."""
    from shiftlab.pmh._routes import route_table

    table = route_table()
    if json_output:
        typer.echo(table.to_json())
    elif list_all:
        table.render(Console())


@pmh_app.command()
def evaluate(
    source: Annotated[Path, typer.Option(help="Source features, (n, d) .npy")],
    source_labels: Annotated[Path, typer.Option(help="Source labels, (n,) integer .npy")],
    target: Annotated[Path, typer.Option(help="Deploy features, (m, d) .npy")],
    target_labels: Annotated[Path, typer.Option(help="Deploy labels, (m,) integer .npy (score the holdout)")],
    kind: Annotated[str, typer.Option(help="Nuisance estimator: domain or subspace")] = "domain",
    label_free_sigma: Annotated[
        bool, typer.Option("--label-free-sigma", help="Estimate Σ without the target pool's labels")
    ] = False,
    rank: Annotated[int, typer.Option(help="Rank of Σ")] = 8,
    seeds: Annotated[int, typer.Option(help="Number of split seeds")] = 3,
    report: Annotated[Path | None, typer.Option(help="Write report.json and report.html here")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    gate: Annotated[bool, typer.Option("--gate", help="Exit with the verdict's code (0 SHIP, 3, 4)")] = False,
    metric: Annotated[
        str,
        typer.Option(
            help="Deploy metric for λ and the verdict: accuracy, balanced_accuracy, neg_log_loss, neg_brier."
        ),
    ] = "accuracy",
    margin: Annotated[
        float,
        typer.Option(help="Smallest deploy gain over baseline worth shipping, in the metric's units."),
    ] = 0.01,
) -> None:
    """Frozen features through PMHMatcher and a linear head: all arms, crossed-bootstrap CIs, the verdict."""
    from shiftlab.pmh._deploy_metric import METRICS
    from shiftlab.pmh._frozen import FrozenConfig, evaluate_frozen
    from shiftlab.pmh._verdict import VerdictConfig

    if seeds < 1:
        raise typer.BadParameter("needs at least one seed", param_hint="--seeds")
    if metric not in METRICS:
        raise typer.BadParameter(f"unknown metric; choose from {', '.join(METRICS)}", param_hint="--metric")
    try:
        verdict_config = VerdictConfig(margin=margin)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--margin") from err
    arrays = {
        name: _load_npy(path, name)
        for name, path in (
            ("--source", source),
            ("--source-labels", source_labels),
            ("--target", target),
            ("--target-labels", target_labels),
        )
    }
    config = FrozenConfig(rank=rank, seeds=tuple(range(seeds)), use_target_labels=not label_free_sigma)
    try:
        result = evaluate_frozen(
            arrays["--source"],
            arrays["--source-labels"],
            arrays["--target"],
            arrays["--target-labels"],
            kind=kind,
            config=config,
            verdict_config=verdict_config,
            metric=metric,
        )
    except (ValueError, TypeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    emit(result, json_output=json_output, out=report)
    if gate:
        raise typer.Exit(result.verdict.exit_code)
