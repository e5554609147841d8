"""`shiftlab ph train --dataset cifar10` end to end on a tiny directory in the standard CIFAR-10 layout."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from shiftlab.cli._ph import ph_app

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = 2  # images of each class in each batch file: 10 per class for training, 2 for test


def _batch(name: str, rng: np.random.Generator) -> dict[bytes, object]:
    """A batch dict as CIFAR-10 stores it: uint8 rows of 3072 (R, G, B planes), labels as a list."""
    labels = [c for c in range(10) for _ in range(PER_CLASS)]
    colour = np.repeat(np.asarray(labels, dtype=np.int64) * 20, 3072).reshape(-1, 3072)
    data = (colour + rng.integers(0, 60, size=colour.shape)).astype(np.uint8)
    return {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"{name}_{k}.png".encode() for k in range(len(labels))],
    }


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    """``tmp_path/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(_batch(name, rng), protocol=2))
    meta = {b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072, b"num_cases_per_batch": 20}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return tmp_path


def test_cli_ph_train_cifar10_cnn_end_to_end(cifar_root: Path) -> None:
    app = typer.Typer()
    app.add_typer(ph_app, name="ph")
    args = ["ph", "train", "--dataset", "cifar10", "--data-dir", str(cifar_root), "--model", "cnn"]
    result = CliRunner().invoke(app, [*args, "--epochs", "1", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["kind"] == "ph-train" and (payload["dataset"], payload["model"]) == ("cifar10", "cnn")
    assert payload["class_names"] == NAMES
    assert payload["n_train"] + payload["n_val"] == 10 * 5 * PER_CLASS and payload["n_test"] == 10 * PER_CLASS
    assert len(payload["epochs"]) == 1 and len(payload["lr_search"]) == 5
    assert payload["lr_chosen"] == payload["lr_by_val_accuracy"]
    assert len(payload["geometry"]["merge_order"]) == 9
    assert {name for pair in payload["geometry"]["merge_order"] for name in pair[:2]} == set(NAMES)
    assert payload["epochs"][0]["layer_state"] in {"HEALTHY", "WATCH", "COLLAPSE"}
    assert 0.0 <= payload["test_accuracy"] <= 1.0
    assert payload["fgsm"]["mean_perturbation"] > 0


def test_cli_ph_train_cifar10_without_data_dir_says_what_to_do() -> None:
    app = typer.Typer()
    app.add_typer(ph_app, name="ph")
    result = CliRunner().invoke(app, ["ph", "train", "--dataset", "cifar10", "--quiet"])
    assert result.exit_code == 2
    assert "'cifar10' needs data_dir (CLI: --data-dir)" in result.output
