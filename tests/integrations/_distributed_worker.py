"""What each rank of the 2-process tests in ``test_distributed.py`` runs, and the data both sides share.

Imported by the test (single-process references) and, through ``launch``, by every spawned rank; each
rank writes its results to ``out/rank{r}.pt`` (tensors and plain types, read with weights_only=True).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import shiftlab.pmh._trainer as trainer_module
from shiftlab.integrations.distributed import estimate_nuisance_distributed
from shiftlab.pmh import ArmsData, NuisanceEstimate, PMHTrainer, TrainConfig, run_arms
from shiftlab.pmh._train_config import BudgetSettings

D = 6


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _net(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, classes))


def _shift(x: torch.Tensor, _generator: torch.Generator) -> torch.Tensor:
    return x.roll(1, dims=1) * 1.1


def _brighten(x: torch.Tensor, _generator: torch.Generator) -> torch.Tensor:
    return x + 0.3


def estimation_cases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Name -> (estimator, keywords on the whole data). Target rows are sorted by class, so the two
    halves hold different class sets (rank 0: classes 0-1, rank 1: classes 1-2)."""
    g = _g(0)
    xs = torch.randn(90, D, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 3, (90,), generator=g)
    yt = torch.randint(0, 3, (80,), generator=g).sort().values
    xt = torch.randn(80, D, generator=g, dtype=torch.float64) * 1.5 + torch.eye(D)[yt] * 2.0
    seqs = (torch.randn(6, 12, D, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2, D)).cumsum(1)
    content = torch.randn(60, D, generator=g, dtype=torch.float64)
    styled = content + torch.randn(60, 2, generator=g, dtype=torch.float64) @ torch.randn(
        2, D, generator=g, dtype=torch.float64
    )
    net = _net(1).double()
    return {
        "subspace": ("subspace", {"source": xs, "source_labels": ys, "target": xt, "target_labels": yt}),
        "domain_labelled": (
            "domain",
            {"source": xs, "target": xt, "source_labels": ys, "target_labels": yt, "rank": 3},
        ),
        "domain_moments": ("domain", {"source": xs, "target": xt, "floor": "residual"}),
        "domain_pseudo": (
            "domain",
            {"source": xs, "target": xt, "source_labels": ys, "model": net, "confidence": 0.4},
        ),
        "domain_layer": (
            "domain",
            {"source": xs, "target": xt, "source_labels": ys, "target_labels": yt, "model": net, "site": "1"},
        ),
        "isotropic": ("isotropic", {"repeats": torch.randn(20, 3, D, generator=g, dtype=torch.float64)}),
        "augmentation": ("augmentation", {"x": xs, "augmentations": [_shift, _brighten], "labels": ys}),
        "style": ("style", {"content": content, "styled": styled, "labels": ys[:60], "rank": 2}),
        "temporal": ("temporal", {"sequences": list(seqs), "lag": 2}),
        "compositional": ("compositional", {"x": xs, "coordinates": [0, 2, 3], "labels": ys, "rank": 2}),
        # PGD without random start: each row's displacement depends on that row only, so shards add up
        "adversarial": (
            "adversarial",
            {"model": net, "x": xs, "y": ys, "epsilon": 1.0, "norm": "l2", "random_start": False, "rank": 2},
        ),
    }


def shard(kwargs: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """Contiguous row blocks of every data argument (whole sequences for ``sequences``)."""
    data = {"source", "source_labels", "target", "target_labels", "repeats", "x", "labels", "content"}
    data |= {"styled", "sequences", "y"}
    out = {}
    for key, value in kwargs.items():
        if key in data:
            n = len(value)
            start, stop = rank * n // world, (rank + 1) * n // world
            value = value[start:stop]
        out[key] = value
    return out


def train_data(n: int = 97) -> tuple[torch.Tensor, torch.Tensor]:
    """97 rows: with global batches of 32 the last batch has one row, so rank 1 gets none."""
    x = torch.randn(n, D, generator=_g(5))
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def fit_estimate() -> NuisanceEstimate:
    """A rank-1 Σ along the last input coordinate, no floor (the jvp penalty is then deterministic)."""
    factor = torch.zeros(D, 1)
    factor[-1, 0] = 1.0
    return NuisanceEstimate(factor, 0.0, torch.tensor([1.0] + [0.0] * (D - 1)), "input", (D,), "demo", {})


def fit_config(**kwargs: Any) -> TrainConfig:
    base: dict[str, Any] = {"epochs": 3, "batch_size": 32, "lr": 1e-2, "device": "cpu", "strength": 1.0}
    base["estimator"] = "jvp"
    base.update(kwargs)
    return TrainConfig(**base)


def arms_data() -> ArmsData:
    g = _g(7)

    def split(n: int, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, D, generator=g)
        y = (x[:, 0] > 0).long()
        if shift:
            x[:, -1] += 2.0 * torch.randn(n, generator=g)
        return x, y

    pool = split(60, True)
    return ArmsData(split(120, False), split(60, False), pool[0], split(80, True), target_pool_labels=pool[1])


def arms_kwargs() -> dict[str, Any]:
    return {
        "seeds": (0,),
        "strengths": (0.1,),
        "selection": "source_val",
        "estimate_kwargs": {"rank": 1},
        "quiet": True,
        "config": TrainConfig(epochs=2, batch_size=40, lr=1e-2, device="cpu", estimator="jvp"),
    }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _summary(estimate: NuisanceEstimate) -> dict[str, Any]:
    signal = None if estimate.signal is None else estimate.signal @ estimate.signal.T
    return {
        "covariance": estimate.covariance(),
        "spectrum": estimate.spectrum,
        "floor": estimate.floor,
        "rank": estimate.rank,
        "counts": dict(estimate.counts),
        "signal": signal,
        "meta": (estimate.site, estimate.shape, estimate.estimator),
    }


def _error(call: Any) -> str:
    try:
        call()
    except ValueError as err:
        return str(err)
    return "no error"


def run(rank: int, world: int, out: str) -> None:
    """Every 2-process check of the test module, on this rank."""
    torch.set_num_threads(1)
    names = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS", "LOCAL_RANK")
    result: dict[str, Any] = {"estimates": {}, "env": {k: os.environ.get(k) for k in names}}
    for name, (kind, kwargs) in estimation_cases().items():
        result["estimates"][name] = _summary(
            estimate_nuisance_distributed(kind, **shard(kwargs, rank, world))
        )
    xs = torch.randn(10, D)
    bad = xs.clone()
    bad[0, 0] = float("nan")
    result["nan_error"] = _error(
        lambda: estimate_nuisance_distributed("style", content=xs, styled=bad if rank else xs)
    )
    result["option_error"] = _error(
        lambda: estimate_nuisance_distributed("style", content=xs, styled=xs + 1, rank=1 + rank)
    )

    saves: list[int] = []
    original = trainer_module.save_checkpoint

    def counting(*args: Any, **kwargs: Any) -> Path:
        saves.append(rank)
        return original(*args, **kwargs)

    trainer_module.save_checkpoint = counting
    x, y = train_data()
    user_model = _net()
    before = _state(user_model)
    trainer = PMHTrainer(user_model, config=fit_config())
    fit = trainer.fit(
        (x, y), estimate=fit_estimate(), val=(x, y), quiet=True, checkpoint_dir=Path(out, "ckpt")
    )
    result["fit_state"] = _state(fit.model)
    result["fit_history"] = [dataclasses.astuple(e)[:6] for e in fit.history]
    result["user_model_unchanged"] = all(torch.equal(v, before[k]) for k, v in _state(user_model).items())
    result["saves"] = len(saves)
    trainer_module.save_checkpoint = original

    # a different initial model on each rank: rank 0's weights must win
    budgeted = PMHTrainer(
        _net(seed=rank), config=fit_config(estimator="fd", budget=BudgetSettings(warmup=0.2))
    )
    result["fd_state"] = _state(budgeted.fit((x, y), estimate=fit_estimate(), quiet=True).model)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=16, sampler=DistributedSampler(TensorDataset(x, y), seed=3)
    )
    loaded = PMHTrainer(_net(), config=fit_config(estimator="hutchinson")).fit(
        loader, estimate=fit_estimate(), quiet=True
    )
    result["loader_state"] = _state(loaded.model)
    result["loader_steps"] = [e.steps for e in loaded.history]

    other = fit_estimate()
    other = dataclasses.replace(other, factor=other.factor.roll(1, dims=0) if rank else other.factor)
    result["estimate_error"] = _error(
        lambda: PMHTrainer(_net(), config=fit_config(epochs=1)).fit((x, y), estimate=other, quiet=True)
    )
    result["config_error"] = _error(
        lambda: PMHTrainer(_net(), config=fit_config(lr=0.1 * (rank + 1))).fit((x, y), quiet=True)
    )

    arms = run_arms(lambda: _net(classes=2), arms_data(), **arms_kwargs())
    result["arms"] = {f"{r.arm}/{r.selection}": r.correct for r in arms.runs}
    torch.save(result, Path(out, f"rank{rank}.pt"))
