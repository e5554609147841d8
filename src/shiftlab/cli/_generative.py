"""``shiftlab perturb target|evidence``: the OT weight perturbation of a generator on the 2-D toy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shiftlab.cli._output import emit

generative_app = typer.Typer(
    help="Move a pretrained generator's output distribution with optimal transport (2-D toy).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="PerturbConfig YAML (missing keys: defaults).")
]
PlotOption = Annotated[bool, typer.Option("--plot", help="Write the figures as PNG files into --out.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
OutOption = Annotated[Path | None, typer.Option(help="Save report.json and report.html (and PNGs) here.")]
CheckpointOption = Annotated[
    Path | None, typer.Option(help="Generator checkpoint from pretrain_wgan_gp (skips pretraining).")
]
PretrainOption = Annotated[
    int, typer.Option(min=1, help="WGAN-GP generator steps when no checkpoint is given.")
]
SeedOption = Annotated[int, typer.Option(min=0, help="Seed of pretraining, data and evaluation.")]
QuietOption = Annotated[bool, typer.Option("--quiet", help="No progress bars (else shown on a terminal).")]


def _run(
    section: str,
    config: Path | None,
    plot: bool,
    json_output: bool,
    out: Path | None,
    checkpoint: Path | None,
    pretrain_steps: int,
    seed: int,
    quiet: bool,
) -> None:
    from shiftlab.generative import PerturbConfig, run_toy
    from shiftlab.report import atomic_write_bytes, figure_to_png

    if plot and out is None:
        raise typer.BadParameter("--plot needs --out DIR to write the figures into", param_hint="--plot")
    cfg = PerturbConfig.from_yaml(config) if config is not None else PerturbConfig()
    report = run_toy(
        section,  # type: ignore[arg-type]
        cfg,
        checkpoint=checkpoint,
        pretrain_steps=pretrain_steps,
        seed=seed,
        quiet=True if quiet or json_output else None,
    )
    emit(report, json_output=json_output, out=out)
    if out is not None and plot:
        for name, figure in report.figures().items():
            atomic_write_bytes(out / f"{name.replace(' ', '_')}.png", figure_to_png(figure))


@generative_app.command("target")
def target(
    config: ConfigOption = None,
    plot: PlotOption = False,
    json_output: JsonOption = False,
    out: OutOption = None,
    checkpoint: CheckpointOption = None,
    pretrain_steps: PretrainOption = 1000,
    seed: SeedOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Section 2: move the generator towards a sample of the four Gaussians shifted by (1.8, 1.8)."""
    _run("target", config, plot, json_output, out, checkpoint, pretrain_steps, seed, quiet)


@generative_app.command("evidence")
def evidence(
    config: ConfigOption = None,
    plot: PlotOption = False,
    json_output: JsonOption = False,
    out: OutOption = None,
    checkpoint: CheckpointOption = None,
    pretrain_steps: PretrainOption = 1000,
    seed: SeedOption = 0,
    quiet: QuietOption = False,
) -> None:
    """Section 3: move the generator towards three small evidence domains around the (1.8, 1.8) shift."""
    _run("evidence", config, plot, json_output, out, checkpoint, pretrain_steps, seed, quiet)
