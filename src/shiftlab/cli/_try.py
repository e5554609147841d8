"""``shiftlab try``: the main job. MNIST (site A) -> UCI digits (site B), every PMH arm, the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def try_command(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small budget: every arm still trains (about a minute).")
    ] = False,
    seeds: Annotated[int, typer.Option(help="Training seeds per arm (SHIP needs at least 3).")] = 3,
    report: Annotated[Path, typer.Option(help="Write report.json and report.html here.")] = Path(
        "shiftlab-report"
    ),
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    gate: Annotated[
        bool,
        typer.Option(
            "--gate", help="Exit code follows the verdict: 0 SHIP, 3 DO NOT SHIP, 4 INCONCLUSIVE, 1 error."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    threads: Annotated[
        int,
        typer.Option(
            help="CPU threads for torch (small models train fastest on one; measured 10 s vs 94 s)."
        ),
    ] = 1,
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
    """Train on MNIST, deploy on UCI digits: baseline, matched PMH, controls and references; SHIP or not."""
    import torch

    from shiftlab.pmh._deploy_metric import METRICS
    from shiftlab.pmh._digits import digits_budget, digits_mlp
    from shiftlab.pmh._try import try_pmh
    from shiftlab.pmh._verdict import VerdictConfig

    if seeds < 1:
        raise typer.BadParameter("needs at least one seed", param_hint="--seeds")
    if threads < 1:
        raise typer.BadParameter("needs at least one thread", param_hint="--threads")
    if metric not in METRICS:
        raise typer.BadParameter(f"unknown metric; choose from {', '.join(METRICS)}", param_hint="--metric")
    try:
        verdict_config = VerdictConfig(margin=margin)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--margin") from err
    torch.set_num_threads(threads)
    budget = digits_budget(quick=quick)
    try:
        result = try_pmh(
            digits_mlp,
            budget.pair(seed=0),
            seeds=tuple(range(seeds)),
            strengths=budget.strengths,
            config=budget.config,
            verdict_config=verdict_config,
            metric=metric,
            quiet=quiet or json_output,
        )
    except (ValueError, RuntimeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    paths = result.save(report)
    if json_output:
        typer.echo(result.to_json())
    else:
        console = Console()
        result.render(console)
        console.print(result.deploy_summary())
        console.print(f"report: {paths['html']}")
    if gate:
        raise typer.Exit(result.verdict.exit_code)
