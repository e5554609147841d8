"""run_arms: a planted nuisance, identical starts, no mutation, leakage checks, split hashes, bad input."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from shiftlab.data import UnlabelledSplit, two_site
from shiftlab.pmh._arms import run_arms
from shiftlab.pmh._arms_data import ArmsData
from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators import estimate_nuisance
from shiftlab.pmh._metrics import deploy_drift, sensitivity_ratio
from shiftlab.pmh._reference import coral_map, with_target_rows
from shiftlab.pmh._train_config import TrainConfig

D, R = 16, 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _split(n: int, g: torch.Generator, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes from the signs of x0, x1; the target adds N(0, 9) noise on the last R coordinates."""
    x = torch.randn(n, D, generator=g)
    y = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    if shift:
        x[:, D - R :] += 3.0 * torch.randn(n, R, generator=g)
    return x, y


def _planted(seed: int = 123) -> ArmsData:
    g = torch.Generator().manual_seed(seed)
    source, source_val = _split(800, g, False), _split(400, g, False)
    pool, target_val, holdout = _split(300, g, True), _split(200, g, True), _split(600, g, True)
    return ArmsData(source, source_val, pool[0], holdout, target_pool_labels=pool[1], target_val=target_val)


def _factory() -> nn.Module:
    return nn.Sequential(nn.Linear(D, 64), nn.ReLU(), nn.Linear(64, 4))


def _config(**kwargs: Any) -> TrainConfig:
    base: dict[str, Any] = {"epochs": 8, "batch_size": 64, "lr": 3e-3, "device": "cpu"}
    base.update(kwargs)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def planted_result() -> Any:
    return run_arms(
        _factory,
        _planted(),
        seeds=(0, 1, 2),
        strengths=(0.1,),
        selection="target_val",
        references=(),
        estimate_kwargs={"rank": R},
        config=_config(),
        quiet=True,
    )


def test_planted_nuisance_matched_beats_the_controls(planted_result: Any) -> None:
    res = planted_result
    deploy = {arm: float(res.deploy(arm).mean()) for arm in res.arms}
    assert deploy["matched"] > deploy["isotropic"] + 0.03
    assert deploy["matched"] > deploy["wrong"] + 0.03
    assert deploy["matched"] > deploy["baseline"]
    # paired per seed, not just on average
    assert bool((res.deploy("matched") > res.deploy("isotropic")).all())
    assert bool((res.deploy("matched") > res.deploy("wrong")).all())
    drift = {row["arm"]: row for row in res.table()}
    assert drift["matched"]["drift_sigma"] < 0.7 * drift["isotropic"]["drift_sigma"]
    assert drift["matched"]["drift_sigma"] < 0.3 * drift["wrong"]["drift_sigma"]
    assert drift["matched"]["sensitivity_ratio"] < drift["baseline"]["sensitivity_ratio"]


def test_planted_estimate_finds_the_nuisance(planted_result: Any) -> None:
    basis = planted_result.estimate.basis()
    assert basis.shape == (D, R)
    assert float(basis[D - R :].pow(2).sum()) > 0.9 * R  # the range is the last R coordinates


def test_result_shapes_and_helpers(planted_result: Any) -> None:
    res = planted_result
    assert res.correctness("matched").shape == (3, 600) and res.correctness("matched").dtype == torch.bool
    assert torch.allclose(res.correctness("baseline").double().mean(1), res.deploy("baseline"))
    assert res.source_val("wrong").shape == (3,)
    assert {r["arm"] for r in res.table()} == set(res.arms)
    with pytest.raises(ValueError, match="was not run"):
        res.correctness("signal")
    with pytest.raises(ValueError, match="was not made"):
        res.correctness("matched", selection="source_val")


def test_arms_of_a_seed_start_identical_and_see_the_same_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import shiftlab.pmh._arms as arms_module

    seen: list[tuple[int, dict[str, torch.Tensor]]] = []
    original = arms_module.PMHTrainer

    class Recording(original):  # type: ignore[misc, valid-type]
        def __init__(self, model: nn.Module, **kwargs: Any) -> None:
            seen.append((kwargs["config"].seed, copy.deepcopy(model.state_dict())))
            super().__init__(model, **kwargs)

    monkeypatch.setattr(arms_module, "PMHTrainer", Recording)
    run_arms(_factory, _planted(), seeds=(3, 4), strengths=(0.1, 1.0), config=_config(epochs=1), quiet=True)
    by_seed: dict[int, list[dict[str, torch.Tensor]]] = {}
    for seed, state in seen:
        by_seed.setdefault(seed, []).append(state)
    assert sorted(by_seed) == [3, 4]
    for states in by_seed.values():
        assert len(states) == 1 + 3 * 2 + 2  # baseline, 3 arms x 2 strengths, target_rows + coral
        assert all(torch.equal(s[k], states[0][k]) for s in states for k in s)
    assert not torch.equal(by_seed[3][0]["0.weight"], by_seed[4][0]["0.weight"])


def test_user_model_unchanged_and_global_rng_untouched() -> None:
    net = _factory()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    res = run_arms(net, _planted(), seeds=(0,), strengths=(0.1,), config=_config(epochs=1), quiet=True)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert res.arms == ("baseline", "matched", "isotropic", "wrong", "target_rows", "coral")


def test_selection_both_records_both_choices_never_the_holdout() -> None:
    res = run_arms(
        _factory, _planted(), arms=("baseline", "matched"), seeds=(0,), strengths=(0.01, 1.0, 30.0),
        selection="both", references=(), config=_config(epochs=2), quiet=True,
    )  # fmt: skip
    for sel in ("source_val", "target_val"):
        (run,) = res.runs_for("matched", sel)
        assert run.selection == sel and len(run.candidates) == 3
        best = max(run.candidates, key=lambda c: getattr(c, f"{sel}_accuracy"))
        assert getattr(best, f"{sel}_accuracy") == getattr(run, f"{sel}_accuracy")
        assert run.strength in res.strengths
    assert res.primary_selection == "target_val"
    assert len(res.table()) == 3  # baseline once, matched per selection


def test_split_hashes_are_the_sha256_of_the_indices_of_a_site_pair(tiny_pair: Any) -> None:
    res = run_arms(_digits_net, tiny_pair, seeds=(0,), strengths=(0.1,), config=_config(epochs=1), quiet=True)
    index = tiny_pair.target_holdout.indices.to(torch.int64).contiguous()
    digest = hashlib.sha256(f"{index.dtype}:{tuple(index.shape)};".encode() + index.numpy().tobytes())
    assert res.split_hashes["target_holdout"] == digest.hexdigest()
    assert set(res.split_hashes) >= {
        "source_train",
        "target_pool",
        "target_val",
        "target_holdout",
        "estimation_rows",
    }
    assert "checked by indices" in res.estimation
    assert res.arms == ("baseline", "matched", "isotropic", "wrong", "target_rows", "coral")
    assert all(run.correct.shape == (len(tiny_pair.target_holdout),) for run in res.runs)


def test_leakage_through_a_site_pair_raises(tiny_pair: Any) -> None:
    hold = tiny_pair.target_holdout
    leaky = dataclasses.replace(
        tiny_pair,
        target_pool=UnlabelledSplit(x=hold.x[:50], indices=hold.indices[:50], dataset=hold.dataset),
        target_pool_labels=hold.y[:50],
    )
    with pytest.raises(ValueError, match="leakage: 50 row"):
        run_arms(_digits_net, leaky, seeds=(0,), config=_config(epochs=1), quiet=True)


def test_leakage_through_raw_tensors_raises() -> None:
    data = _planted()
    xh, yh = data.target_holdout
    pool = torch.cat([data.target_pool, xh[:3].double().float()])
    leaky = dataclasses.replace(
        data, target_pool=pool, target_pool_labels=torch.cat([data.target_pool_labels, yh[:3]])
    )
    with pytest.raises(ValueError, match="leakage: 3 row"):
        run_arms(_factory, leaky, seeds=(0,), config=_config(epochs=1), quiet=True)
    leaky_val = dataclasses.replace(data, target_val=(xh[:20], yh[:20]))
    with pytest.raises(ValueError, match=r"leakage: 20 row.*target_val"):
        run_arms(_factory, leaky_val, seeds=(0,), config=_config(epochs=1), quiet=True)


def test_prebuilt_estimate_needs_and_checks_its_rows() -> None:
    data = _planted()
    xh, yh = data.target_holdout
    est = estimate_nuisance("domain", source=data.source_train[0], source_labels=data.source_train[1],
                            target=xh[:100], target_labels=yh[:100], rank=R)  # fmt: skip
    with pytest.raises(ValueError, match="estimate_rows"):
        run_arms(_factory, data, estimate=est, seeds=(0,), quiet=True)
    with pytest.raises(ValueError, match=r"leakage: 100 row.*estimate_rows"):
        run_arms(_factory, data, estimate=est, estimate_rows=xh[:100], seeds=(0,), quiet=True)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"arms": ("baseline", "matched", "sideways")}, ValueError, "unknown arms"),
        ({"arms": ("baseline", "signal")}, ValueError, None),
        ({"selection": "holdout"}, ValueError, "selection must be"),
        ({"strengths": (0.1, -1.0)}, ValueError, "strengths"),
        ({"strengths": ()}, ValueError, "strengths"),
        ({"seeds": (0, 0)}, ValueError, "distinct"),
        ({"references": ("augmentation",)}, ValueError, "does not apply"),
        ({"estimate_kind": "temporal"}, ValueError, "estimate_nuisance"),
        ({"estimate_kwargs": {"site": "0"}}, ValueError, "site"),
        ({"estimate_kwargs": {"rank": 10}}, ValueError, "arm 'wrong' cannot be built from the rank-10"),
        ({"config": {"epochs": 1}}, TypeError, "TrainConfig"),
    ],
)
def test_bad_arguments_raise_before_training(
    kwargs: dict[str, Any], error: type[Exception], match: str | None
) -> None:
    data = _planted()
    if kwargs.get("arms") == ("baseline", "signal"):
        data = dataclasses.replace(
            data, source_train=(data.source_train[0], torch.zeros(800, dtype=torch.long))
        )
        match = "class"
    with pytest.raises(error, match=match):
        run_arms(_factory, data, quiet=True, **kwargs)


def test_model_based_estimates_are_made_per_seed_with_the_trained_baseline() -> None:
    """A hidden-layer site: Σ per seed from that seed's baseline, re-estimated while training."""
    res = run_arms(
        _factory, _planted(), site="1", seeds=(0, 1), strengths=(0.1,), selection="target_val",
        config=_config(epochs=2, reestimate_every=1), estimate_kwargs={"rank": 4}, quiet=True,
    )  # fmt: skip
    assert set(res.estimates) == {0, 1} and all(e.site == "1" and e.dim == 64 for e in res.estimates.values())
    assert not torch.equal(res.estimates[0].factor, res.estimates[1].factor)
    (matched,) = res.runs_for("matched")[:1]
    assert [e.reestimated for e in matched.history] == [True, False]
    assert "per seed" in res.estimation


def test_pseudo_labels_drop_the_target_rows_reference() -> None:
    res = run_arms(
        _factory, _planted(), arms=("baseline", "matched"), seeds=(0,), strengths=(0.1,),
        estimate_kwargs={"target_labels": None, "rank": R, "confidence": 0.5},
        config=_config(epochs=2), quiet=True,
    )  # fmt: skip
    assert res.arms == ("baseline", "matched", "coral")
    assert res.estimate.counts["n_target_confident"] > 0
    with pytest.raises(ValueError, match="include 'baseline'"):
        run_arms(_factory, _planted(), arms=("matched",), estimate_kwargs={"target_labels": None}, quiet=True)


def test_selection_on_target_needs_a_target_split() -> None:
    data = dataclasses.replace(_planted(), target_val=None)
    with pytest.raises(ValueError, match="needs a labelled target_val"):
        run_arms(_factory, data, selection="both", quiet=True)


def test_metrics_along_planted_directions() -> None:
    f = torch.zeros(D, R)
    f[D - R :, :] = torch.eye(R)
    est = NuisanceEstimate(f, 0.0, torch.ones(R + 1), "input", (D,), "demo", {})
    blind = nn.Linear(D, 3)
    with torch.no_grad():
        blind.weight[:, D - R :] = 0.0  # constant along Σ
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(0))
    drift = deploy_drift(blind, est, x)
    assert drift.along == 0.0 and drift.complement > 0
    assert sensitivity_ratio(blind, est, x) == 0.0
    # a linear map's drift is exactly ‖W n‖²: along Σ, E‖W F z‖² = ‖W F‖_F²
    w = blind.weight.detach().clone()
    with torch.no_grad():
        blind.weight.copy_(torch.randn(3, D, generator=torch.Generator().manual_seed(1)))
    expected = float((blind.weight.detach() @ f).pow(2).sum())
    assert deploy_drift(blind, est, x, n_draws=400).along == pytest.approx(expected, rel=0.1)
    assert not torch.equal(w, blind.weight)


def test_reference_helpers() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3000, 4, generator=g)
    mix = torch.tensor([[1.0, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 0.5]])
    t = torch.randn(3000, 4, generator=g) @ mix + 1.0
    mapped = coral_map(s, t, shrinkage=1e-6)(s)
    assert torch.allclose(torch.cov(mapped.T), torch.cov(t.T), atol=0.15)
    assert torch.allclose(mapped.mean(0), t.mean(0), atol=0.1)
    (x, y), k = with_target_rows((s, torch.zeros(3000).long()), (t[:100], torch.ones(100).long()))
    assert k == 10 and x.shape[0] == 4000 and int(y.sum()) == 1000


@pytest.fixture(scope="module")
def tiny_pair() -> Any:
    return two_site("mnist-5k", "digits", seed=0, sizes={"source_train": 300, "source_val": 100})


def _digits_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
