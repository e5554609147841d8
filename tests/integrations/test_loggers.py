"""Experiment loggers: trainer epoch logs written by TensorBoard and MLflow (sqlite) and read back."""

from __future__ import annotations

import dataclasses
import doctest
import functools
import math
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard", reason="needs the logging extra: pip install 'shiftlab[logging]'")
pytest.importorskip("mlflow", reason="needs the logging extra: pip install 'shiftlab[logging]'")

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import shiftlab.integrations.loggers as loggers_module
from shiftlab.integrations.loggers import (
    ExperimentLogger,
    MLflowLogger,
    TensorBoardLogger,
    epoch_metrics,
    log_epoch,
    log_epochs,
)
from shiftlab.pmh import EpochLog, PMHTrainer, TrainConfig
from shiftlab.topology import EpochRecord


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow sqlite store for the module (creating its tables takes seconds)."""
    return tmp_path_factory.mktemp("mlflow")


def _train(logger: ExperimentLogger) -> tuple[EpochLog, ...]:
    """A real PMHTrainer run (3 epochs) whose on_epoch_end hook logs every epoch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    trainer = PMHTrainer(net, config=TrainConfig(epochs=3, batch_size=32, device="cpu"))
    trainer.estimate("isotropic", sigma=0.1, dim=4)
    logger.log_params({"epochs": 3, "estimator": "isotropic"})
    result = trainer.fit(
        (x, y), val=(x, y), quiet=True, on_epoch_end=functools.partial(log_epoch, logger, prefix="pmh/")
    )
    return result.history


def _record(epoch: int, **changes: Any) -> EpochRecord:
    """A PHTrainer epoch record built from its fields' types (optional fields left empty)."""
    by_type: dict[str, Any] = {"int": 1, "float": 0.25, "bool": True, "str": "HEALTHY"}
    values = {f.name: by_type.get(str(f.type)) for f in dataclasses.fields(EpochRecord)}
    values.update(epoch=epoch, **changes)
    return EpochRecord(**values)


def test_tensorboard_event_file_reads_back(tmp_path: Path) -> None:
    with TensorBoardLogger(tmp_path / "tb") as logger:
        history = _train(logger)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for key in ("task_loss", "penalty", "applied_ratio", "val_accuracy", "steps", "seconds"):
        scalars = events.Scalars(f"pmh/{key}")
        assert [s.step for s in scalars] == [0, 1, 2]  # each epoch once
        expected = [float(getattr(log, key)) for log in history]
        assert [s.value for s in scalars] == pytest.approx(expected, rel=1e-6)
    assert "pmh/epoch" not in events.Tags()["scalars"]  # the epoch is the step, not a metric
    text = events.Tensors("params/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| epochs | 3 |" in text and "| estimator | isotropic |" in text


def test_mlflow_sqlite_store_reads_back(store: Path) -> None:
    with MLflowLogger(store, experiment="pmh", run_name="first") as logger:
        history = _train(logger)
    assert logger.tracking_uri == f"sqlite:///{(store / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=logger.tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert run.data.params == {"epochs": "3", "estimator": "isotropic"}
    for key in ("task_loss", "penalty", "val_accuracy"):
        points = sorted(client.get_metric_history(logger.run_id, f"pmh/{key}"), key=lambda m: m.step)
        assert [p.step for p in points] == [0, 1, 2]
        assert [p.value for p in points] == pytest.approx(
            [float(getattr(h, key)) for h in history], rel=1e-12
        )
    # a second logger on the same directory adds a run to the same experiment; a failure is recorded
    with pytest.raises(ZeroDivisionError), MLflowLogger(store, experiment="pmh") as second:
        second.log_metrics({"loss": math.nan}, step=0)
        with pytest.raises(ValueError, match=r"letters, digits, spaces and _ - \. : / only; got \['loss%'\]"):
            second.log_metrics({"loss%": 1.0, "ok": 1.0}, step=1)  # rejected before anything is sent
        _ = 1 / 0
    experiment = client.get_experiment_by_name("pmh")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED", "FAILED"}
    assert math.isnan(client.get_metric_history(second.run_id, "loss")[0].value)
    assert set(client.get_run(second.run_id).data.metrics) == {"loss"}


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], int]] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        raise AssertionError("not expected")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.calls.append((dict(metrics), step))

    def close(self) -> None:
        pass


def test_ph_records_log_numbers_and_skip_text_and_missing_values() -> None:
    recorder = _Recorder()
    assert isinstance(recorder, ExperimentLogger)
    count = log_epochs(recorder, [_record(0), _record(1, layer_mean_death=0.04, alert=False)], prefix="ph/")
    assert count == 2 and [step for _, step in recorder.calls] == [0, 1]
    first, second = recorder.calls[0][0], recorder.calls[1][0]
    assert first["ph/alert"] == 1.0 and second["ph/alert"] == 0.0 and first["ph/gap"] == 0.25
    assert "ph/layer_state" not in first and "ph/epoch" not in first
    assert "ph/layer_mean_death" not in first and second["ph/layer_mean_death"] == 0.04
    numeric = {f.name for f in dataclasses.fields(EpochRecord) if str(f.type) in ("int", "float", "bool")}
    assert set(first) == {f"ph/{name}" for name in numeric - {"epoch"}}


def test_bad_input_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    recorder = _Recorder()
    with pytest.raises(TypeError, match="dataclass instance"):
        log_epoch(recorder, {"epoch": 0, "loss": 1.0})
    with pytest.raises(ValueError, match="int field 'epoch'"):
        epoch_metrics(_record(-1))
    with pytest.raises(TypeError, match="log_params, log_metrics and close"):
        log_epoch(object(), _record(0))  # type: ignore[arg-type]
    logger = TensorBoardLogger(tmp_path / "tb")
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        logger.log_metrics({"loss": 1.0}, step=-1)
    with pytest.raises(TypeError, match="'loss' must be a real number"):
        logger.log_metrics({"loss": "low"}, step=0)  # type: ignore[dict-item]
    logger.close()
    with pytest.raises(RuntimeError, match="closed"):
        logger.log_metrics({"loss": 1.0}, step=0)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Tags()["scalars"] == []


def test_missing_extras_name_the_install_line(tmp_path: Path) -> None:
    """With the optional packages absent, each entry point fails with the pip line of its extra."""
    script = f"""
import sys
for name in ("lightning", "torchmetrics", "tensorboard", "mlflow"):
    sys.modules[name] = None  # makes the import fail as if not installed
attempts = (
    "import shiftlab.integrations.lightning",
    "import shiftlab.integrations.metrics",
    "from shiftlab.integrations.loggers import TensorBoardLogger; TensorBoardLogger({str(tmp_path)!r})",
    "from shiftlab.integrations.loggers import MLflowLogger; MLflowLogger({str(tmp_path)!r})",
)
for attempt in attempts:
    try:
        exec(attempt)
    except ImportError as error:
        print(error)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "lightning.pytorch is needed here; install it with: pip install 'shiftlab[lightning]'",
        "torchmetrics is needed here; install it with: pip install 'shiftlab[lightning]'",
        "tensorboard is needed here; install it with: pip install 'shiftlab[logging]'",
        "mlflow is needed here; install it with: pip install 'shiftlab[logging]'",
    ]
    assert list(tmp_path.iterdir()) == []  # nothing was created before the check


def test_docstring_examples() -> None:
    result = doctest.testmod(loggers_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
