"""PMHTrainer and TrainConfig: no mutation, determinism, checkpoint/resume, re-estimation, bad input."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from shiftlab.pmh._train_config import BudgetSettings, TrainConfig
from shiftlab.pmh._trainer import EpochLog, PMHTrainer

D = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n: int = 96, seed: int = 0, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    x[:, -1] += shift * torch.randn(n, generator=g)
    return x, y


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 2))


def _config(**kwargs: object) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 32, "lr": 1e-2, "device": "cpu", "strength": 1.0}
    base.update(kwargs)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _domain_estimate(trainer: PMHTrainer) -> None:
    xs, ys = _data(128, seed=1)
    xt, yt = _data(128, seed=2, shift=3.0)
    trainer.estimate("domain", source=xs, source_labels=ys, target=xt, target_labels=yt, rank=1)


def test_fit_never_mutates_the_given_model() -> None:
    net = _net()
    before = _state(net)
    trainer = PMHTrainer(net, config=_config())
    _domain_estimate(trainer)
    result = trainer.fit(_data(), quiet=True)
    assert _same(before, _state(net))
    assert net.training  # the caller's train/eval flag is untouched too
    assert result.model is trainer.model and result.model is not net
    assert not _same(before, _state(result.model))


def test_matched_penalty_shrinks_sensitivity_along_sigma() -> None:
    """The penalty's gradient reaches the weights: the output moves less along Σ (the last input)."""
    x, y = _data(256)
    step = torch.zeros(D)
    step[-1] = 1e-3
    drift = {}
    for strength in (0.0, 10.0):
        trainer = PMHTrainer(_net(), config=_config(epochs=5, strength=strength, estimator="jvp"))
        _domain_estimate(trainer)
        model = trainer.fit((x, y), quiet=True).model
        with torch.no_grad():
            drift[strength] = float((model(x + step) - model(x)).pow(2).sum(1).mean())
    assert drift[10.0] < 0.1 * drift[0.0]


def test_same_seed_same_run_and_different_seed_differs() -> None:
    runs = []
    for seed in (0, 0, 1):
        trainer = PMHTrainer(_net(), config=_config(seed=seed, estimator="hutchinson"))
        _domain_estimate(trainer)
        runs.append(_state(trainer.fit(_data(), mode="isotropic", quiet=True).model))
    assert _same(runs[0], runs[1])
    assert not _same(runs[0], runs[2])


@pytest.mark.parametrize("budget", [None, BudgetSettings(min_ratio=0.05, max_ratio=0.2, warmup=0.5)])
def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path, budget: BudgetSettings | None) -> None:
    config = _config(epochs=4, estimator="hutchinson", budget=budget)
    data, val = _data(), _data(40, seed=5)

    def trainer() -> PMHTrainer:
        t = PMHTrainer(_net(), config=config)
        _domain_estimate(t)
        return t

    full = trainer().fit(data, mode="isotropic", val=val, quiet=True, checkpoint_dir=tmp_path / "a")

    class CrashError(RuntimeError):
        pass

    def crash_after_two(log: EpochLog) -> None:
        if log.epoch == 1:
            raise CrashError

    with pytest.raises(CrashError):
        trainer().fit(
            data,
            mode="isotropic",
            val=val,
            quiet=True,
            checkpoint_dir=tmp_path / "b",
            on_epoch_end=crash_after_two,
        )
    resumed = trainer().fit(
        data, mode="isotropic", val=val, quiet=True, checkpoint_dir=tmp_path / "b", resume=True
    )
    assert resumed.resumed_from == 2
    assert [e.epoch for e in resumed.history] == [0, 1, 2, 3]
    assert _same(_state(full.model), _state(resumed.model))
    assert [e.task_loss for e in full.history] == [e.task_loss for e in resumed.history]


def test_resume_rejects_a_different_config(tmp_path: Path) -> None:
    PMHTrainer(_net(), config=_config(epochs=1, strength=0.0)).fit(
        _data(), quiet=True, checkpoint_dir=tmp_path
    )
    other = PMHTrainer(_net(), config=_config(epochs=1, strength=0.0, lr=0.5))
    with pytest.raises(ValueError, match=r"different TrainConfig \(fields \['lr'\]"):
        other.fit(_data(), quiet=True, checkpoint_dir=tmp_path, resume=True)


def test_resume_rejects_another_arm(tmp_path: Path) -> None:
    first = PMHTrainer(_net(), config=_config(epochs=1))
    _domain_estimate(first)
    first.fit(_data(), mode="wrong", quiet=True, checkpoint_dir=tmp_path)
    second = PMHTrainer(_net(), config=_config(epochs=1))
    _domain_estimate(second)
    with pytest.raises(ValueError, match="holds a 'wrong' run"):
        second.fit(_data(), mode="matched", quiet=True, checkpoint_dir=tmp_path, resume=True)


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    PMHTrainer(_net(), config=_config(epochs=1)).fit(_data(), quiet=True, checkpoint_dir=tmp_path)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["epoch"] == 1 and set(payload["model"]) == set(_net().state_dict())


def test_reestimation_follows_the_trained_features() -> None:
    """A hidden-layer Σ is re-estimated with the model being trained: the factor changes, logs say so."""
    trainer = PMHTrainer(_net(), site="1", config=_config(epochs=3, reestimate_every=1))
    _domain_estimate(trainer)
    first = trainer.estimate_
    assert first is not None and first.site == "1"
    result = trainer.fit(_data(), quiet=True)
    assert [e.reestimated for e in result.history] == [True, True, False]
    assert result.estimate is not None and result.estimate is not first
    assert not torch.allclose(result.estimate.factor.abs(), first.factor.abs())


def test_reestimation_needs_a_model_based_estimate() -> None:
    trainer = PMHTrainer(_net(), config=_config(reestimate_every=1))
    _domain_estimate(trainer)  # labelled, at the input: nothing to re-estimate
    with pytest.raises(ValueError, match="model-based"):
        trainer.fit(_data(), quiet=True)


def test_dataloader_and_penalty_fraction() -> None:
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)
    trainer = PMHTrainer(_net(), config=_config(penalty_fraction=0.25, budget=BudgetSettings()))
    _domain_estimate(trainer)
    result = trainer.fit(loader, val=(x, y), quiet=True)
    assert all(e.steps == 3 and e.penalty > 0 for e in result.history)
    assert all(0 <= e.applied_ratio <= 0.30 + 1e-9 for e in result.history)
    assert all(e.val_accuracy is not None for e in result.history)


def test_plain_training_without_estimate_logs_no_penalty() -> None:
    result = PMHTrainer(_net(), config=_config()).fit(_data(), quiet=True)
    assert result.strength == 0.0 and all(e.penalty == 0.0 for e in result.history)


def test_augment_is_applied_with_a_seeded_generator() -> None:
    seen: list[torch.Tensor] = []

    def aug(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        seen.append(torch.rand(1, generator=g))
        return x + 0.1 * torch.randn(x.shape, generator=g)

    PMHTrainer(_net(), config=_config(epochs=2, strength=0.0)).fit(_data(), quiet=True, augment=aug)
    assert len(seen) == 6 and len({float(s) for s in seen}) == 6


def test_config_yaml_round_trip(tmp_path: Path) -> None:
    config = TrainConfig(epochs=7, budget=BudgetSettings(max_ratio=0.5), optimizer="sgd", device="cpu")
    config.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == config
    assert TrainConfig.from_dict({}) == TrainConfig()
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match=r"unknown TrainConfig\.budget key"):
        TrainConfig.from_dict({"budget": {"ratio": 3}})


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("epochs", 0, ValueError),
        ("batch_size", 1.5, ValueError),
        ("lr", math.nan, ValueError),
        ("lr", 0.0, ValueError),
        ("strength", -1.0, ValueError),
        ("penalty_fraction", 0.0, ValueError),
        ("penalty_fraction", 1.5, ValueError),
        ("optimizer", "lbfgs", ValueError),
        ("estimator", "exact", ValueError),
        ("device", "gpu7", ValueError),
        ("budget", {"max_ratio": 0.3}, TypeError),
        ("seed", True, ValueError),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=field):
        dataclasses.replace(TrainConfig(), **{field: value})


def test_bad_input_is_rejected_before_training() -> None:
    net = _net()
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        PMHTrainer("net")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown layer 'enc'; valid names: '0', '1', '2'"):
        PMHTrainer(net, site="enc")
    trainer = PMHTrainer(net, config=_config())
    x, y = _data()
    bad_x = x.clone()
    bad_x[3, 2] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        trainer.fit((bad_x, y), quiet=True)
    with pytest.raises(TypeError, match="integer class labels"):
        trainer.fit((x, y.float()), quiet=True)
    with pytest.raises(ValueError, match="one label per row"):
        trainer.fit((x, y[:-1]), quiet=True)
    with pytest.raises(TypeError, match=r"\(x, y\) tuple"):
        trainer.fit(x, quiet=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown mode"):
        trainer.fit((x, y), mode="orthogonal", quiet=True)
    with pytest.raises(ValueError, match=r"call \.estimate"):
        trainer.fit((x, y), mode="wrong", quiet=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        trainer.fit((x, y), resume=True, quiet=True)
    with pytest.raises(TypeError, match="using="):
        trainer.estimate("isotropic", sigma=0.1, dim=D, model=net)
    with pytest.raises(ValueError, match="unknown nuisance kind"):
        trainer.estimate("magic")
    trainer.estimate("isotropic", sigma=0.1, dim=D + 1)
    with pytest.raises(ValueError, match="inputs of shape"):
        trainer.fit((x, y), quiet=True)
    with pytest.raises(ValueError, match="empty"):
        trainer.fit(DataLoader(TensorDataset(x[:0], y[:0])), quiet=True)
    assert _same(_state(net), _state(_net()))
