"""PHTrainer end to end on UCI digits, its config, and `shiftlab ph train` through typer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from shiftlab.cli._ph import ph_app
from shiftlab.topology import LayerState, MonitorConfig, PHTrainConfig, PHTrainer, PHTrainReport


@pytest.fixture(scope="module")
def report() -> PHTrainReport:
    config = PHTrainConfig(
        dataset="digits", epochs=3, lr_candidates=(1e-3, 1e-2), search_epochs=2, device="cpu", seed=1
    )
    return PHTrainer(config).run(quiet=True)


def test_all_four_phases_report_consistent_results(report: PHTrainReport) -> None:
    assert report.n_train + report.n_val == 1348 and report.n_test == 449
    assert report.difficulty_h0 > 0 and 0 <= report.difficulty_val_accuracy <= 1
    # phase 2: both criteria are reported and the configured one is used
    assert [c.lr for c in report.lr_search] == [1e-3, 1e-2]
    assert all(len(c.h0_trajectory) == 2 and c.h0_cv is not None and c.h0_cv >= 0 for c in report.lr_search)
    best = max(report.lr_search, key=lambda c: c.val_accuracy)
    assert report.lr_by_val_accuracy == best.lr == report.lr_chosen
    assert report.lr_by_h0_cv == min(report.lr_search, key=lambda c: c.h0_cv or 0.0).lr
    assert report.lr_by_val_loss == min(report.lr_search, key=lambda c: c.val_loss).lr
    # phase 3: the monitor's numbers are in every epoch, the best validation epoch is kept
    assert 1 <= len(report.epochs) <= 3
    for r in report.epochs:
        assert r.alert == (abs(r.gap) > r.noise_floor)
        assert r.layer_state in {s.value for s in LayerState}
    assert report.best_epoch == max(report.epochs, key=lambda r: r.val_accuracy).epoch
    assert report.test_accuracy > 0.8
    # phase 4: all 45 pairs scored, a real attack
    assert len(report.confusion_score.pairs) == 45 and report.confusion_score.k == 5
    assert report.fgsm.adversarial_accuracy < report.fgsm.clean_accuracy
    assert report.fgsm.mean_perturbation > 0
    assert int(report.confusion.sum()) == report.n_val


def test_report_serialises_and_renders(report: PHTrainReport, tmp_path: Path) -> None:
    payload = json.loads(report.to_json())
    assert payload["kind"] == "ph-train"
    assert len(payload["geometry"]["merge_order"]) == 9 and len(payload["geometry"]["linkage"]) == 9
    assert set(report.figures()) == {"h0_curves", "dendrogram", "predicted_vs_actual"}
    paths = report.save(tmp_path)
    assert json.loads(paths["json"].read_text())["test_accuracy"] == report.test_accuracy
    assert "data:image/png;base64" in paths["html"].read_text()
    assert "test accuracy" in report.headline()


def test_same_seed_same_report() -> None:
    config = PHTrainConfig(dataset="digits", epochs=1, lr=3e-3, device="cpu", max_train=400)
    a = PHTrainer(config).run(quiet=True).to_dict()
    b = PHTrainer(config).run(quiet=True).to_dict()
    assert a == b


def test_on_epoch_end_sees_every_training_epoch_as_it_happens() -> None:
    config = PHTrainConfig(dataset="digits", epochs=2, lr=3e-3, device="cpu", max_train=400)
    seen: list[int] = []
    report = PHTrainer(config).run(quiet=True, on_epoch_end=lambda record: seen.append(record.epoch))
    assert seen == [r.epoch for r in report.epochs] and len(seen) == 2


def test_config_validation_and_yaml_roundtrip(tmp_path: Path) -> None:
    config = PHTrainConfig(dataset="mnist", model="cnn", lr=0.01, monitor=MonitorConfig(patience=2))
    path = config.to_yaml(tmp_path / "ph.yaml")
    assert PHTrainConfig.from_yaml(path) == config
    for kwargs, match in [
        ({"dataset": "svhn"}, "valid datasets"),
        ({"model": "resnet"}, "valid models: mlp, cnn, purefield"),
        ({"lr": -1.0}, "lr must be a positive"),
        ({"lr_criterion": "loss"}, "val_accuracy, val_loss, h0_cv"),
        ({"optimizer": "rmsprop"}, "valid: adam, sgd"),
        ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\)"),
        ({"search_epochs": 1}, "search_epochs must be >= 2"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"device": "tpu"}, "valid devices"),
        ({"dataset": "cifar10"}, "needs data_dir"),
        ({"dataset": "digits", "data_dir": "/data"}, "takes no data_dir"),
    ]:
        with pytest.raises(ValueError, match=match):
            PHTrainConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown config keys"):
        PHTrainConfig.from_dict({"epoch": 3})


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(ph_app, name="ph")
    return app


def test_cli_ph_train_digits_json_end_to_end() -> None:
    result = CliRunner().invoke(_cli(), ["ph", "train", "--dataset", "digits", "--epochs", "2", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["kind"] == "ph-train" and payload["dataset"] == "digits"
    assert 1 <= len(payload["epochs"]) <= 2
    assert len(payload["lr_search"]) == 5 and payload["lr_chosen"] == payload["lr_by_val_accuracy"]
    assert payload["fgsm"]["adversarial_accuracy"] < payload["fgsm"]["clean_accuracy"]
    assert all("noise_floor" in e and "gap" in e for e in payload["epochs"])


def test_cli_rejects_bad_options() -> None:
    runner = CliRunner()
    bad_lr = runner.invoke(_cli(), ["ph", "train", "--lr", "fast"])
    assert bad_lr.exit_code == 2 and "--lr must be 'auto' or a positive number" in bad_lr.output
    bad_model = runner.invoke(_cli(), ["ph", "train", "--model", "resnet", "--quiet"])
    assert bad_model.exit_code == 2 and "valid models" in bad_model.output


@pytest.mark.parametrize("model", ["cnn", "purefield"])
def test_other_model_families_run_the_pipeline(model: str) -> None:
    config = PHTrainConfig(dataset="digits", model=model, epochs=2, lr=3e-3, max_train=400, device="cpu")
    report = PHTrainer(config).run(quiet=True)
    assert report.model == model and len(report.epochs) == 2
    assert report.fgsm.adversarial_accuracy <= report.fgsm.clean_accuracy
    assert all(r.layer_state in {s.value for s in LayerState} for r in report.epochs)
