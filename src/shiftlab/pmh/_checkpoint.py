"""Trainer checkpoints: one ``checkpoint.pt`` of tensors and plain types, written atomically.

Loaded with ``torch.load(weights_only=True)``: no pickled objects, so a checkpoint cannot run code. The
data order and the penalty's probes are seeded per epoch (``epoch_seed``), so the model, the optimizer,
the loss budget's step counter, the epoch logs and (after re-estimation) Σ are all a resume needs to
reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftlab.pmh._budget import LossBudget
from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._train_config import TrainConfig
from shiftlab.report import atomic_write_bytes

FORMAT_VERSION = 1
# The device may differ between the run that wrote a checkpoint and the one that resumes it.
_IGNORED_CONFIG_KEYS = ("device",)


@dataclasses.dataclass(frozen=True)
class CheckpointState:
    """What a resume restores beside the model and optimizer states."""

    epoch: int
    history: list[dict[str, Any]]
    estimate: NuisanceEstimate | None


def _config_key(config: TrainConfig) -> dict[str, Any]:
    data = config.to_dict()
    for key in _IGNORED_CONFIG_KEYS:
        data.pop(key)
    return data


def _budget_state(budget: LossBudget | None) -> dict[str, Any] | None:
    # LossBudget has no public state API; its warm-up ramp depends on the global step counter.
    if budget is None:
        return None
    return {"step": budget._step, "ever_active": budget._ever_active}


def _estimate_state(estimate: NuisanceEstimate | None) -> dict[str, Any] | None:
    if estimate is None:
        return None
    return {
        "factor": estimate.factor.detach().cpu(),
        "floor": estimate.floor,
        "spectrum": estimate.spectrum.detach().cpu(),
        "site": estimate.site,
        "shape": list(estimate.shape),
        "estimator": estimate.estimator,
        "counts": dict(estimate.counts),
        "signal": None if estimate.signal is None else estimate.signal.detach().cpu(),
    }


def save_checkpoint(
    path: Path,
    config: TrainConfig,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    budget: LossBudget | None,
    history: Sequence[Any],
    estimate: NuisanceEstimate | None,
    mode: str,
) -> Path:
    """Write the state after ``epoch`` completed epochs to ``path`` (temp file + rename)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "config": _config_key(config),
        "mode": mode,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "budget": _budget_state(budget),
        "history": [dataclasses.asdict(log) for log in history],
        "estimate": _estimate_state(estimate),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    budget: LossBudget | None,
    mode: str,
) -> CheckpointState:
    """Restore ``model``, ``optimizer`` and ``budget`` in place from ``path``; return the rest."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    payload = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a PMH trainer checkpoint of format {FORMAT_VERSION}")
    if payload["config"] != _config_key(config):
        theirs, ours = payload["config"], _config_key(config)
        differ = sorted(k for k in ours if theirs.get(k) != ours[k])
        raise ValueError(
            f"{path} was written with a different TrainConfig (fields {differ} differ); "
            "resume with the same config or start without resume=True"
        )
    if payload["mode"] != mode:
        raise ValueError(f"{path} holds a {payload['mode']!r} run; this fit trains {mode!r}")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    saved_budget = payload["budget"]
    if (saved_budget is None) != (budget is None):
        raise ValueError(f"{path}: the checkpoint and this run disagree on whether the loss budget is used")
    if budget is not None:
        budget._step = int(saved_budget["step"])
        budget._ever_active = bool(saved_budget["ever_active"])
    raw = payload["estimate"]
    estimate = None
    if raw is not None:
        estimate = NuisanceEstimate(
            factor=raw["factor"],
            floor=float(raw["floor"]),
            spectrum=raw["spectrum"],
            site=str(raw["site"]),
            shape=tuple(int(s) for s in raw["shape"]),
            estimator=str(raw["estimator"]),
            counts={str(k): int(v) for k, v in raw["counts"].items()},
            signal=raw["signal"],
        )
    return CheckpointState(epoch=int(payload["epoch"]), history=list(payload["history"]), estimate=estimate)
