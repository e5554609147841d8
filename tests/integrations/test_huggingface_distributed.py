"""PMHHFTrainer under 2 CPU processes (gloo, DistributedDataParallel through accelerate): the penalty's
gradient is synchronised with the task's, so the ranks end with the same weights, and those of one process
training on the same global batches."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from shiftlab.integrations._optional import require

require("transformers", "hf")

from shiftlab.integrations.distributed import launch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import _hf_worker as worker  # noqa: E402


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("hf_ranks")
    launch(worker.run, 2, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_ranks_end_with_identical_weights_and_the_penalty_changes_them(ranks: list[dict[str, Any]]) -> None:
    start = worker.model().state_dict()
    for strength in ("0", "1"):
        state0, state1 = ranks[0][f"state_{strength}"], ranks[1][f"state_{strength}"]
        for name, value in state0.items():
            assert torch.equal(value, state1[name]), (strength, name)
        assert not torch.equal(
            state0["bert.embeddings.word_embeddings.weight"], start["bert.embeddings.word_embeddings.weight"]
        )
    plain, penalised = ranks[0]["state_0"], ranks[0]["state_1"]
    moved = [n for n in plain if plain[n].is_floating_point() and not torch.allclose(plain[n], penalised[n])]
    assert "bert.embeddings.word_embeddings.weight" in moved and "classifier.weight" in moved


@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_two_processes_train_like_one_on_the_same_global_batches(
    ranks: list[dict[str, Any]], strength: float, tmp_path: Path
) -> None:
    assert all(r["wrapped"] == "DistributedDataParallel" and r["world"] == 2 for r in ranks)
    trainer = worker.train(str(tmp_path), strength=strength, world=1)
    single = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    for name, value in ranks[0][f"state_{strength:g}"].items():
        torch.testing.assert_close(value, single[name], rtol=1e-4, atol=1e-5, msg=name)
    # the logged PMH terms are means over all rows: over ranks, as the Trainer's own loss
    logged = [e for e in trainer.state.log_history if "pmh_penalty" in e]
    for result in ranks:
        mine = [e for e in result[f"log_{strength:g}"] if "pmh_penalty" in e]
        for key in ("pmh_penalty", "pmh_task_loss", "loss"):
            assert [e[key] for e in mine] == pytest.approx([e[key] for e in logged], rel=1e-5), key


def test_penalty_is_logged_every_step_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        penalties = [e["pmh_penalty"] for e in result["log_1"] if "pmh_penalty" in e]
        assert len(penalties) == 4 and all(p > 0 for p in penalties)
