"""One epoch of :class:`~shiftlab.pmh.PMHTrainer`'s fit loop: the epoch's penalty (its probes seeded per
epoch and rank), the epoch's batches on the device, the optimisation steps and the :class:`EpochLog` they
add up to."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from shiftlab.pmh._budget import LossBudget
from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._penalty import PMHPenalty
from shiftlab.pmh._train_config import TrainConfig
from shiftlab.pmh._train_data import Batches, EpochLog, accuracy, epoch_seed, on_device
from shiftlab.pmh._train_dist import DataParallel, single_step


def epoch_penalty(
    arm: NuisanceEstimate,
    epoch: int,
    *,
    config: TrainConfig,
    measure: str,
    device: torch.device,
    parallel: DataParallel | None,
) -> PMHPenalty:
    """The penalty for the arm's Σ' in ``epoch``, its random probes seeded by (seed, epoch, rank)."""
    c = config
    shard = 0 if parallel is None else parallel.rank
    return PMHPenalty(
        arm,
        measure=measure,
        mode="matched",
        estimator=c.estimator,
        n_probes=c.n_probes,
        fd_step=c.fd_step,
        seed=epoch_seed(c.seed, epoch, stream=1, shard=shard),
    ).to(device)


def epoch_stream(
    batches: Batches,
    epoch: int,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
    *,
    seed: int,
    device: torch.device,
    parallel: DataParallel | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's batches on the device: whole, or this rank's rows in a data-parallel run."""
    if parallel is not None:
        return parallel.stream(batches, epoch, seed, device, augment)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, stream=2))
    return on_device(batches.epoch(epoch), device, augment, generator)


def train_epoch(
    model: nn.Module,
    epoch: int,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    arm: NuisanceEstimate | None,
    budget: LossBudget | None,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
    *,
    config: TrainConfig,
    measure: str,
    device: torch.device,
    parallel: DataParallel | None,
) -> EpochLog:
    """Train ``model`` in place for one epoch (penalised with ``arm``'s Σ' unless ``None``) and log it."""
    c = config
    began = time.perf_counter()
    model.train()
    penalty = (
        None
        if arm is None
        else epoch_penalty(arm, epoch, config=c, measure=measure, device=device, parallel=parallel)
    )
    sums = {"task": 0.0, "penalty": 0.0, "ratio": 0.0}
    steps = 0
    buffers = any(True for _ in model.buffers())
    for x, y in epoch_stream(batches, epoch, augment, seed=c.seed, device=device, parallel=parallel):
        optimizer.zero_grad(set_to_none=True)
        step = single_step if parallel is None else parallel.step
        task, value, ratio = step(model, x, y, penalty, budget, c.strength, c.penalty_fraction, epoch, steps)
        optimizer.step()
        if parallel is not None and buffers:
            parallel.sync_buffers(model)
        sums["task"] += task
        sums["penalty"] += value
        sums["ratio"] += ratio
        steps += 1
    if steps == 0:
        raise ValueError(f"the training data yielded no batches in epoch {epoch}")
    applied, capped = sums["ratio"] / steps, 0
    if budget is not None:
        record = budget.end_epoch()
        applied = record.mean_applied_ratio if penalty is not None else 0.0
        capped = record.boost_capped
    val_accuracy = None
    if val is not None:
        evaluate = accuracy if parallel is None else parallel.accuracy
        val_accuracy = evaluate(model, val[0], val[1])
    return EpochLog(
        epoch=epoch,
        task_loss=sums["task"] / steps,
        penalty=sums["penalty"] / steps,
        applied_ratio=applied,
        val_accuracy=val_accuracy,
        steps=steps,
        seconds=time.perf_counter() - began,
        boost_capped=capped,
    )
