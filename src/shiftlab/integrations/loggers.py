"""Experiment logging for shiftlab's own trainers: a small protocol, TensorBoard and MLflow backends.

:class:`ExperimentLogger` is what a backend provides: ``log_params``, ``log_metrics(metrics, step)`` and
``close``. :func:`log_epoch` turns one per-epoch record of a shiftlab trainer (a dataclass with an
``epoch`` field, such as :class:`~shiftlab.pmh.EpochLog` or :class:`~shiftlab.topology.EpochRecord`) into
one ``log_metrics`` call, so it plugs into ``PMHTrainer.fit(on_epoch_end=functools.partial(log_epoch,
logger))``; :func:`log_epochs` logs a finished run's records (e.g. ``PHTrainReport.epochs``).

Inside Lightning or Hugging Face use the framework's own logger instead: shiftlab's callbacks there log
through it (``pl_module.log``), never through these backends, so nothing is logged twice.

Backends import their package when constructed: ``pip install 'shiftlab[logging]'``.

Examples
--------
>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Epoch:
...     epoch: int
...     loss: float
...     stopped: bool
...     note: str
>>> epoch_metrics(Epoch(3, 0.25, False, "ok"), prefix="pmh/")
(3, {'pmh/loss': 0.25, 'pmh/stopped': 0.0})
"""

from __future__ import annotations

import dataclasses
import numbers
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from shiftlab.integrations._optional import require

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "ExperimentLogger",
    "MLflowLogger",
    "TensorBoardLogger",
    "epoch_metrics",
    "log_epoch",
    "log_epochs",
]

#: Characters MLflow accepts in metric and parameter names.
_MLFLOW_NAME = re.compile(r"^[A-Za-z0-9_\-. :/]+$")


@runtime_checkable
class ExperimentLogger(Protocol):
    """What a logging backend provides.

    ``log_params`` records run settings once (values are stored as text); ``log_metrics`` records numbers
    at an integer ``step`` (the epoch for shiftlab's trainers; NaN and infinities are kept, they are
    information); ``close`` flushes and ends the run.
    """

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record run settings."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record numbers at ``step``."""

    def close(self) -> None:
        """Flush and end the run."""


def _checked_params(params: Mapping[str, Any]) -> dict[str, str]:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of names to values; got {type(params).__name__}")
    out: dict[str, str] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"parameter names must be non-empty strings; got {name!r}")
        out[name] = str(value)
    return out


def _checked_metrics(metrics: Mapping[str, float], step: int) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of names to numbers; got {type(metrics).__name__}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0; got {step!r}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names must be non-empty strings; got {name!r}")
        if not isinstance(value, numbers.Real):
            raise TypeError(f"metric {name!r} must be a real number; got {type(value).__name__}")
        out[name] = float(value)
    return out


def epoch_metrics(record: Any, *, prefix: str = "") -> tuple[int, dict[str, float]]:
    """The step and the numeric fields of one per-epoch record.

    ``record`` is a dataclass instance with an integer ``epoch`` field. Every other field that is a real
    number becomes a metric named ``prefix + field`` (booleans as 0/1); ``None``, strings and other
    values are left out.

    Returns
    -------
    tuple
        ``(epoch, {name: value})``.

    Examples
    --------
    >>> from shiftlab.pmh import EpochLog
    >>> step, metrics = epoch_metrics(EpochLog(2, 0.4, 0.01, 0.1, None, 16, 1.5))  # val_accuracy None
    >>> step, sorted(metrics), metrics["reestimated"]
    (2, ['applied_ratio', 'boost_capped', 'penalty', 'reestimated', 'seconds', 'steps', 'task_loss'], 0.0)
    """
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        raise TypeError(f"record must be a dataclass instance; got {type(record).__name__}")
    epoch = getattr(record, "epoch", None)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"record needs an int field 'epoch' >= 0; got {epoch!r}")
    metrics: dict[str, float] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.name != "epoch" and isinstance(value, numbers.Real):
            metrics[prefix + field.name] = float(value)
    return epoch, metrics


def log_epoch(logger: ExperimentLogger, record: Any, *, prefix: str = "") -> None:
    """Log one per-epoch record (see :func:`epoch_metrics`) at step ``record.epoch``.

    With :class:`~shiftlab.pmh.PMHTrainer`: ``trainer.fit(..., on_epoch_end=functools.partial(log_epoch,
    logger))``.

    Examples
    --------
    >>> import tempfile
    >>> from shiftlab.pmh import EpochLog
    >>> with TensorBoardLogger(tempfile.mkdtemp()) as logger:
    ...     log_epoch(logger, EpochLog(0, 0.4, 0.01, 0.1, 0.9, 16, 1.5), prefix="pmh/")
    """
    if not isinstance(logger, ExperimentLogger):
        raise TypeError(f"logger must provide log_params, log_metrics and close; got {type(logger).__name__}")
    step, metrics = epoch_metrics(record, prefix=prefix)
    logger.log_metrics(metrics, step)


def log_epochs(logger: ExperimentLogger, records: Iterable[Any], *, prefix: str = "") -> int:
    """Log a finished run's per-epoch records (e.g. ``PHTrainReport.epochs``); returns how many.

    Examples
    --------
    >>> import tempfile
    >>> from shiftlab.pmh import EpochLog
    >>> records = [EpochLog(e, 1.0 / (e + 1), 0.0, 0.0, None, 16, 1.0) for e in range(3)]
    >>> with TensorBoardLogger(tempfile.mkdtemp()) as logger:
    ...     log_epochs(logger, records)
    3
    """
    count = 0
    for record in records:
        log_epoch(logger, record, prefix=prefix)
        count += 1
    return count


class TensorBoardLogger:
    """Write TensorBoard event files with ``torch.utils.tensorboard``.

    Metrics are scalars (``add_scalar(name, value, step)``); parameters are one text summary ``params``
    (a Markdown table). The writer is flushed after every call, so a reader sees each epoch as it ends.
    Read back with ``tensorboard.backend.event_processing.event_accumulator.EventAccumulator(log_dir)``.

    Parameters
    ----------
    log_dir
        Directory of the event file (created if needed).

    Examples
    --------
    >>> import tempfile
    >>> with TensorBoardLogger(tempfile.mkdtemp()) as logger:
    ...     logger.log_metrics({"loss": 0.5}, step=0)
    """

    def __init__(self, log_dir: str | Path) -> None:
        require("tensorboard", "logging")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer: SummaryWriter | None = SummaryWriter(log_dir=str(self.log_dir))

    def _open(self) -> SummaryWriter:
        if self._writer is None:
            raise RuntimeError("this TensorBoardLogger is closed")
        return self._writer

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record ``params`` as a Markdown table in the text summary ``params``."""
        checked = _checked_params(params)
        writer = self._open()
        rows = "\n".join(f"| {name} | {value} |" for name, value in checked.items())
        writer.add_text("params", f"| parameter | value |\n|---|---|\n{rows}")
        writer.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """One scalar per metric at ``step``."""
        checked = _checked_metrics(metrics, step)
        writer = self._open()
        for name, value in checked.items():
            writer.add_scalar(name, value, global_step=step)
        writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardLogger:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class MLflowLogger:
    """Log to an MLflow run in a SQLite tracking store (``sqlite:///<directory>/mlflow.db``).

    The store and the experiment are created when missing (later loggers on the same directory add runs
    to it); artifacts go to ``<directory>/artifacts``. Everything goes through an ``MlflowClient`` bound to
    this store: no global MLflow state (tracking URI, active run) is set. Names may use letters, digits
    and ``_ - . : /`` and spaces (MLflow's rule; checked before anything is sent). NaN is stored as NaN;
    MLflow's SQL store itself keeps ±inf as ±1.8e308 (the largest float), which is what reads back.

    Parameters
    ----------
    directory
        Directory of the store.
    experiment
        Experiment name.
    run_name
        Optional run name.

    Attributes
    ----------
    tracking_uri, run_id
        Where the run lives: ``MlflowClient(tracking_uri).get_metric_history(run_id, name)`` reads it back.

    Examples
    --------
    >>> import tempfile
    >>> from mlflow.tracking import MlflowClient
    >>> with MLflowLogger(tempfile.mkdtemp(), run_name="demo") as logger:
    ...     logger.log_params({"lr": 0.001})
    ...     logger.log_metrics({"loss": 0.5}, step=0)
    >>> MlflowClient(logger.tracking_uri).get_run(logger.run_id).data.metrics
    {'loss': 0.5}
    """

    def __init__(
        self, directory: str | Path, *, experiment: str = "shiftlab", run_name: str | None = None
    ) -> None:
        if not isinstance(experiment, str) or not experiment:
            raise ValueError(f"experiment must be a non-empty string; got {experiment!r}")
        require("mlflow", "logging")
        from mlflow.tracking import MlflowClient

        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{self.directory / 'mlflow.db'}"
        self._client: MlflowClient | None = MlflowClient(tracking_uri=self.tracking_uri)
        found = self._client.get_experiment_by_name(experiment)
        if found is None:
            artifacts = (self.directory / "artifacts").as_uri()
            experiment_id = self._client.create_experiment(experiment, artifact_location=artifacts)
        else:
            experiment_id = found.experiment_id
        self.run_id: str = self._client.create_run(experiment_id, run_name=run_name).info.run_id

    def _open(self) -> MlflowClient:
        if self._client is None:
            raise RuntimeError("this MLflowLogger is closed")
        return self._client

    @staticmethod
    def _check_names(names: Iterable[str]) -> None:
        bad = [name for name in names if not _MLFLOW_NAME.match(name)]
        if bad:
            raise ValueError(f"MLflow names may use letters, digits, spaces and _ - . : / only; got {bad}")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record ``params`` as MLflow run parameters (text)."""
        from mlflow.entities import Param

        checked = _checked_params(params)
        self._check_names(checked)
        self._open().log_batch(self.run_id, params=[Param(k, v) for k, v in checked.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` at ``step`` in one batch."""
        from mlflow.entities import Metric

        checked = _checked_metrics(metrics, step)
        self._check_names(checked)
        stamp = int(time.time() * 1000)
        entries = [Metric(k, v, stamp, step) for k, v in checked.items()]
        self._open().log_batch(self.run_id, metrics=entries)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (``"FINISHED"`` or ``"FAILED"``; idempotent)."""
        if status not in ("FINISHED", "FAILED"):
            raise ValueError(f"status must be 'FINISHED' or 'FAILED'; got {status!r}")
        if self._client is not None:
            self._client.set_terminated(self.run_id, status=status)
            self._client = None

    def __enter__(self) -> MLflowLogger:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close("FINISHED" if kind is None else "FAILED")
