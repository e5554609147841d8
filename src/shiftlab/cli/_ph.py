"""``shiftlab ph``: topological training diagnostics. Parses, calls :mod:`shiftlab.topology`, renders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shiftlab.cli._output import emit

ph_app = typer.Typer(
    help="Topological training diagnostics: H0 persistence of class geometry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _parse_lr(value: str) -> float | None:
    if value.strip().lower() == "auto":
        return None
    try:
        lr = float(value)
    except ValueError:
        raise typer.BadParameter(f"--lr must be 'auto' or a positive number; got {value!r}") from None
    if not lr > 0:
        raise typer.BadParameter(f"--lr must be 'auto' or a positive number; got {value!r}")
    return lr


@ph_app.command("train")
def train(
    dataset: Annotated[
        str, typer.Option(help="digits, mnist, mnist-5k, fashion-mnist or cifar10 (needs --data-dir).")
    ] = "digits",
    data_dir: Annotated[Path | None, typer.Option(help="Directory holding the data set's files.")] = None,
    model: Annotated[str, typer.Option(help="mlp, cnn or purefield.")] = "mlp",
    optimizer: Annotated[
        str, typer.Option(help="adam, or sgd (momentum 0.9), for the LR search and training.")
    ] = "adam",
    epochs: Annotated[
        int, typer.Option(help="Maximum training epochs (early stopping may end sooner).")
    ] = 20,
    lr: Annotated[str, typer.Option(help="Learning rate, or 'auto' to search the candidates.")] = "auto",
    lr_criterion: Annotated[
        str,
        typer.Option(
            help="How 'auto' picks the lr: val_accuracy, val_loss or h0_cv (all three are reported; "
            "docs/claims.md, claim 6: h0_cv picks poor rates)."
        ),
    ] = "val_accuracy",
    search_epochs: Annotated[int, typer.Option(help="Epochs per learning-rate candidate.")] = 3,
    max_train: Annotated[int | None, typer.Option(help="Use at most this many training images.")] = None,
    fgsm_epsilon: Annotated[float, typer.Option(help="FGSM step on images in [0, 1].")] = 0.1,
    patience: Annotated[int, typer.Option(help="Stop after this many consecutive H0 alerts.")] = 3,
    seed: Annotated[int, typer.Option(help="The one seed (splits, init, batches, null draws).")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also save report.json and report.html here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Difficulty probe, LR search, H0-monitored training, confusion pairs, dendrogram and FGSM analysis."""
    from shiftlab.data import DatasetNotAvailableError
    from shiftlab.topology import MonitorConfig, PHTrainConfig, PHTrainer

    try:
        config = PHTrainConfig(
            dataset=dataset.strip().lower().replace("_", "-"),
            data_dir=None if data_dir is None else str(data_dir),
            model=model,
            optimizer=optimizer,
            epochs=epochs,
            lr=_parse_lr(lr),
            lr_criterion=lr_criterion,  # type: ignore[arg-type]  # validated by PHTrainConfig
            search_epochs=search_epochs,
            max_train=max_train,
            fgsm_epsilon=fgsm_epsilon,
            monitor=MonitorConfig(patience=patience, seed=seed),
            seed=seed,
            device=device,
        )
        report = PHTrainer(config).run(quiet=quiet or json_output)
    except (ValueError, TypeError, DatasetNotAvailableError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from None
    emit(report, json_output=json_output, out=out)
