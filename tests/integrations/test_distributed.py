"""2 CPU processes (gloo) against 1: all-reduced nuisance estimates, data-parallel PMHTrainer, run_arms.

One ``launch`` of 2 ranks runs every multi-process check (``_distributed_worker.run``) and writes its
results; the tests compare them with single-process runs on the same data here.
"""

from __future__ import annotations

import doctest
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import shiftlab.integrations.distributed as distributed
from shiftlab.integrations.distributed import (
    STATISTICS_KINDS,
    estimate_from_statistics,
    launch,
    nuisance_statistics,
    process_group,
)
from shiftlab.pmh import PMHTrainer, estimate_nuisance, run_arms
from shiftlab.pmh._estimators_stats_local import STATISTICS

sys.path.insert(0, str(Path(__file__).parent))
import _distributed_worker as worker

TOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ranks")
    launch(worker.run, 2, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            a.shape == b.shape and bool((a.double() - b.double()).abs().max() <= TOL) if a.numel() else True
        )
    if isinstance(a, float):
        return abs(a - b) <= TOL
    return bool(a == b)


@pytest.mark.parametrize("name", sorted(worker.estimation_cases()))
def test_two_process_estimate_equals_one_process(ranks: list[dict[str, Any]], name: str) -> None:
    kind, kwargs = worker.estimation_cases()[name]
    single = worker._summary(estimate_nuisance(kind, **kwargs))
    for result in ranks:
        got = result["estimates"][name]
        assert got.keys() == single.keys()
        for key, value in single.items():
            if value is None:
                assert got[key] is None, key
            else:
                assert _close(value, got[key]), (name, key)
    assert float(single["covariance"].abs().max()) > 0.1  # not trivially zero


def test_every_sum_estimator_is_covered() -> None:
    assert (
        set(STATISTICS)
        == set(STATISTICS_KINDS)
        == {
            "subspace",
            "isotropic",
            "augmentation",
            "domain",
            "compositional",
            "temporal",
            "style",
            "adversarial",
        }
    )
    assert {kind for kind, _ in worker.estimation_cases().values()} == set(STATISTICS_KINDS)


def test_bad_input_on_one_rank_raises_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert "NaN" in ranks[1]["nan_error"] or "non-finite" in ranks[1]["nan_error"]
    assert "rank 1" in ranks[0]["nan_error"]
    assert all("disagree" in r["option_error"] and "options" in r["option_error"] for r in ranks)


def test_launched_processes_keep_nvlink_multicast_off(ranks: list[dict[str, Any]]) -> None:
    for rank, result in enumerate(ranks):
        assert result["env"] == {**distributed.SAFE_ENV, "LOCAL_RANK": str(rank)}
    assert distributed.SAFE_ENV == {
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1",
    }


def test_ranks_that_fit_differently_fail_together(ranks: list[dict[str, Any]]) -> None:
    assert "different Σ" in ranks[1]["estimate_error"] and "rank 1" in ranks[0]["estimate_error"]
    assert all("disagree" in r["config_error"] and "'config'" in r["config_error"] for r in ranks)


def test_two_process_fit_equals_one_process_fit(ranks: list[dict[str, Any]]) -> None:
    """Same global batches (the last one has a single row, so rank 1 sits it out): same weights."""
    x, y = worker.train_data()
    fit = PMHTrainer(worker._net(), config=worker.fit_config()).fit(
        (x, y), estimate=worker.fit_estimate(), val=(x, y), quiet=True
    )
    single = worker._state(fit.model)
    for name, value in single.items():
        assert torch.equal(ranks[0]["fit_state"][name], ranks[1]["fit_state"][name]), name
        torch.testing.assert_close(ranks[0]["fit_state"][name], value, atol=1e-5, rtol=0)
    expected = [tuple(e.__dict__.values())[:6] for e in fit.history]
    for got, want in zip(ranks[0]["fit_history"], expected, strict=True):
        assert got[0] == want[0] and got[4] == want[4] and got[5] == want[5]  # epoch, val acc, steps
        assert got[1] == pytest.approx(want[1], abs=1e-5) and got[2] == pytest.approx(want[2], abs=1e-5)
    assert ranks[0]["fit_history"] == ranks[1]["fit_history"]
    assert all(r["user_model_unchanged"] for r in ranks)
    assert [r["saves"] for r in ranks] == [3, 0]  # rank 0 writes the checkpoint after each epoch


@pytest.mark.parametrize("key", ["fd_state", "loader_state"])
def test_ranks_end_with_identical_weights(ranks: list[dict[str, Any]], key: str) -> None:
    """Random probes differ per rank, a loader shards by its sampler, ranks start apart: still in sync."""
    for name, value in ranks[0][key].items():
        assert torch.equal(value, ranks[1][key][name]), name
    assert ranks[0]["loader_steps"] == ranks[1]["loader_steps"] == [4, 4, 4]


def test_run_arms_under_two_processes(ranks: list[dict[str, Any]]) -> None:
    """Every arm agrees across ranks. Against one process: arms whose penalty is deterministic (a
    factor without floor, with the jvp estimator) agree to a float-rounding flip; the isotropic arm is
    all floor, whose random probes are drawn per rank, so only its accuracy is close."""
    single = run_arms(lambda: worker._net(classes=2), worker.arms_data(), **worker.arms_kwargs())
    expected = {f"{r.arm}/{r.selection}": r.correct for r in single.runs}
    assert ranks[0]["arms"].keys() == expected.keys() == ranks[1]["arms"].keys()
    assert len(expected) == 6
    for arm, correct in expected.items():
        got = ranks[0]["arms"][arm]
        assert torch.equal(got, ranks[1]["arms"][arm]), arm
        if arm.startswith("isotropic"):
            assert abs(float(got.double().mean() - correct.double().mean())) <= 0.05
        else:
            assert int((got != correct).sum()) <= 1, arm


def test_statistics_add_across_shards_in_one_process() -> None:
    for name, (kind, kwargs) in worker.estimation_cases().items():
        parts = [nuisance_statistics(kind, **worker.shard(kwargs, r, 3)) for r in range(3)]
        merged = estimate_from_statistics(parts[0] + parts[1] + parts[2])
        single = estimate_nuisance(kind, **kwargs)
        torch.testing.assert_close(merged.covariance(), single.covariance(), atol=TOL, rtol=0, msg=name)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="not initialised"):
        distributed.estimate_nuisance_distributed("style", content=torch.zeros(2, 2), styled=torch.ones(2, 2))
    with pytest.raises(TypeError, match="model"):
        nuisance_statistics("adversarial", model=None, x=torch.zeros(2, 2), y=[0, 1], epsilon=0.1)
    with pytest.raises(ValueError, match="sigma"):
        nuisance_statistics("isotropic", sigma=0.5, dim=3)
    with pytest.raises(ValueError, match="class indices >= 0"):
        nuisance_statistics("style", content=torch.zeros(2, 2), styled=torch.ones(2, 2), labels=[-1, 0])
    with pytest.raises(TypeError, match="unexpected keyword"):
        nuisance_statistics("style", content=torch.zeros(2, 2), styled=torch.ones(2, 2), lag=3)
    with pytest.raises(ValueError, match="nprocs"):
        launch(worker.run, 0, "unused")
    with pytest.raises(ValueError, match="init_method"), process_group("gloo", rank=0, world_size=2):
        pass
    a = nuisance_statistics("style", content=torch.zeros(2, 2), styled=torch.ones(2, 2), rank=1)
    b = nuisance_statistics("style", content=torch.zeros(2, 2), styled=torch.ones(2, 2))
    with pytest.raises(ValueError, match="options"):
        a + b


def test_a_single_process_group_leaves_the_trainer_single_process() -> None:
    x, y = worker.train_data()
    with process_group("gloo", rank=0, world_size=1):
        inside = PMHTrainer(worker._net(), config=worker.fit_config(epochs=1))
        state = worker._state(inside.fit((x, y), estimate=worker.fit_estimate(), quiet=True).model)
    outside = PMHTrainer(worker._net(), config=worker.fit_config(epochs=1))
    expected = worker._state(outside.fit((x, y), estimate=worker.fit_estimate(), quiet=True).model)
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_docstring_examples() -> None:
    result = doctest.testmod(distributed, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
