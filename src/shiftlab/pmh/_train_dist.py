r"""PMH training steps: single-process, and data-parallel (each rank takes a disjoint slice of every
global batch, gradients are summed).

Why not ``DistributedDataParallel`` (measured by ``benchmarks/pmh_ddp.py --ddp-check``, 2 gloo ranks):
the penalty runs the model inside ``torch.func.jvp`` / ``torch.func.vmap`` (the vectorised ``jvp`` and
``hutchinson`` paths), and a DDP module fails there from its second step on ("Cannot access data
pointer of Tensor that doesn't have storage": DDP rebuilds its gradient buckets in its second
forward). DDP survives only with ``vectorize=False``, the forward-mode loop, which costs 2.4× (jvp) and
1.5× (hutchinson) the vectorised step on the benchmark CNN on CPU. Running the penalty on the inner
module instead skips DDP's gradient hooks: ranks silently drift apart. DDP would also average
gradients (over-weighting a rank with fewer rows in a short last batch) and leave each rank's loss
budget to compute its coefficient from its own losses. So the trainer keeps the model unwrapped and,
after each backward, all-reduces the gradients itself (one flat buffer per dtype), giving up DDP's
overlap of communication with the backward (the benchmark's ``ddp-plain`` row measures that).

Each rank's loss is weighted so that the **sum** of the rank gradients is the gradient of the
single-process loss on the global batch: with :math:`n_r` rows on rank r (:math:`N = \sum n_r`) and
:math:`k_r` penalty rows (:math:`K = \sum k_r`),

.. math:: \nabla L = \sum_r \Big[\frac{1}{N}\nabla \sum_{i \in r}\mathrm{CE}_i
          + c \,\frac{1}{K}\nabla \sum_{i \le k_r} P_i\Big],

with the coefficient c (λ, or the loss budget's) computed on every rank from the all-reduced task loss
and penalty, so every rank applies the same step. A task and penalty term whose *value* is the global
mean and whose *gradient* is the local share carry this through unchanged code (e.g. the budget).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.functional import cross_entropy

from shiftlab.pmh._budget import LossBudget
from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._penalty import PMHPenalty
from shiftlab.pmh._train_data import Batches, Pair, epoch_seed, predictions

Group = Any  # torch.distributed.ProcessGroup (None: the default group)


def fingerprint(value: Any) -> int:
    """A 31-bit CRC of ``repr(value)``, comparable across processes."""
    return zlib.crc32(repr(value).encode()) & 0x7FFFFFFF


class DataParallel:
    """This process's place in a process group, and the collectives the trainer needs.

    Build it with :meth:`resolve`; every method is a collective that every rank must call in the same
    order.
    """

    def __init__(self, group: Group, device: torch.device) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.nccl = dist.get_backend(group) == "nccl"
        self.device = _place(device)

    @classmethod
    def resolve(cls, process_group: Any, device: torch.device) -> DataParallel | None:
        """``"auto"``: the default group when one with more than one rank is initialised; ``"off"``:
        single-process; a ``ProcessGroup``: that group. ``None`` when training is single-process.

        ``device`` is where the model trains; ``cuda`` without an index becomes this rank's GPU
        (``LOCAL_RANK`` as set by ``torchrun``, else the current device).
        """
        if isinstance(process_group, str):
            if process_group not in ("auto", "off"):
                raise ValueError(
                    f"process_group must be 'auto', 'off' or a ProcessGroup; got {process_group!r}"
                )
            if process_group == "off" or not (dist.is_available() and dist.is_initialized()):
                return None
            group = None
        else:
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("a process_group was given but torch.distributed is not initialised")
            group = process_group
        parallel = cls(group, device)
        if parallel.world > 1 and parallel.nccl and parallel.device.type != "cuda":
            raise ValueError(f"an NCCL process group needs the model on a GPU; got device {device}")
        return parallel if parallel.world > 1 else None

    @property
    def comm(self) -> torch.device:
        """Where collectives run: the rank's GPU for NCCL, the CPU otherwise."""
        return self.device if self.nccl else torch.device("cpu")

    def total(self, values: Sequence[float]) -> list[float]:
        """Sum of ``values`` over ranks (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self.comm)
        dist.all_reduce(t, group=self.group)
        return t.tolist()

    def raise_together(self, error: BaseException | None) -> None:
        """Raise on every rank when any rank hit ``error`` (its own error there, a pointer elsewhere)."""
        t = torch.tensor([self.rank if error is not None else -1], dtype=torch.float64, device=self.comm)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        if error is not None:
            raise error
        if float(t) >= 0:
            raise ValueError(f"rank {int(t)} rejected its input (see its error); no rank went on")

    def agree(self, fields: dict[str, Any], what: str) -> None:
        """``ValueError`` on every rank when any field's value differs between ranks."""
        names = sorted(fields)
        codes = [float(fingerprint(fields[n])) for n in names]
        t = torch.tensor(codes + [-c for c in codes], dtype=torch.float64, device=self.comm)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        n = len(names)
        differ = [names[i] for i in range(n) if float(t[i]) != -float(t[n + i])]
        if differ:
            mine = repr({k: fields[k] for k in differ})
            mine = mine if len(mine) <= 400 else mine[:400] + "..."
            raise ValueError(f"the ranks disagree on {what}: {differ} differ (rank {self.rank} has {mine})")

    def check_fit(
        self,
        settings: dict[str, Any],
        mode: str,
        steps: int | None,
        val: Any,
        augment: Any,
        checkpoint: Path | None,
        resuming: bool,
    ) -> None:
        """Every rank calls ``fit`` alike: same config (device aside), arm, steps per epoch, and the same
        use of validation, augmentation and checkpoints."""
        fields = {
            "config": settings,
            "mode": mode,
            "steps": steps,
            "val": val is not None,
            "augment": augment is not None,
            "checkpoint": checkpoint is not None,
            "resuming": resuming,
        }
        self.agree(
            fields,
            "how to fit (each rank must call fit alike; a loader needs len(), equal on every rank, and "
            "checkpoint_dir must be visible to every rank)",
        )
        if steps is None:
            raise ValueError("a data-parallel fit needs a loader with len(), equal on every rank")

    def broadcast(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values (one flat broadcast per dtype)."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1).to(self.comm) for t in group])
            dist.broadcast(flat, group=self.group, group_src=0)
            offset = 0
            for t in group:
                with torch.no_grad():
                    t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def broadcast_module(self, model: nn.Module) -> None:
        """Every rank starts from rank 0's parameters and buffers (architectures checked first)."""
        layout = [(n, tuple(p.shape), str(p.dtype)) for n, p in model.state_dict().items()]
        self.agree({"state_dict layout": layout}, "the model")
        self.broadcast([*model.parameters(), *model.buffers()])

    @overload
    def broadcast_estimate(self, estimate: NuisanceEstimate) -> NuisanceEstimate: ...

    @overload
    def broadcast_estimate(self, estimate: None) -> None: ...

    @overload
    def broadcast_estimate(self, estimate: NuisanceEstimate | None) -> NuisanceEstimate | None: ...

    def broadcast_estimate(self, estimate: NuisanceEstimate | None) -> NuisanceEstimate | None:
        """Rank 0's estimate on every rank, after checking that every rank computed the same Σ.

        The check compares shapes exactly, then the spectrum and :math:`\\lVert F_0^\\top F_r\\rVert_F^2`
        against :math:`\\sum \\lambda_i^2` (equal whenever the factors span the same space with the
        same scales, whatever the signs of the eigenvectors) to a relative 1e-4.
        """
        if estimate is None:
            self.agree({"estimate": None}, "the estimate (None on some ranks)")
            return None
        layout = {
            "estimate": (estimate.site, estimate.shape, estimate.rank, estimate.spectrum.numel()),
            "signal": None if estimate.signal is None else tuple(estimate.signal.shape),
        }
        self.agree(layout, "the estimate's layout")
        ours = estimate.to("cpu", torch.float64)
        theirs = [ours.factor.clone(), ours.spectrum.clone(), torch.tensor([ours.floor], dtype=torch.float64)]
        signal = None if ours.signal is None else ours.signal.clone()
        self.broadcast([*theirs, *([] if signal is None else [signal])])
        factor, spectrum, floor = theirs
        scale = float(spectrum.pow(2).sum()) if spectrum.numel() else 0.0
        overlap = float((factor.T @ ours.factor).pow(2).sum())
        close = (
            torch.allclose(spectrum, ours.spectrum, rtol=1e-4, atol=1e-12)
            and math.isclose(float(floor), ours.floor, rel_tol=1e-4, abs_tol=1e-12)
            and math.isclose(overlap, float(factor.pow(2).sum(0).pow(2).sum()), rel_tol=1e-4, abs_tol=1e-12)
        )
        self.raise_together(
            None
            if close or scale == 0
            else ValueError(
                f"rank {self.rank} estimated a different Σ than rank 0: pass the same data to "
                "estimate(...) on every rank, or estimate once from all-reduced statistics "
                "(shiftlab.integrations.distributed.estimate_nuisance_distributed) and pass it as estimate="
            )
        )
        dtype = estimate.factor.dtype
        return NuisanceEstimate(
            factor=factor.to(dtype),
            floor=float(floor),
            spectrum=spectrum.to(dtype),
            site=estimate.site,
            shape=estimate.shape,
            estimator=estimate.estimator,
            counts=estimate.counts,
            signal=None if signal is None else signal.to(dtype),
        )

    def rows(self, n: int) -> slice:
        """This rank's contiguous slice of a global batch of ``n`` rows (sizes differ by at most 1)."""
        q, extra = divmod(n, self.world)
        start = self.rank * q + min(self.rank, extra)
        return slice(start, start + q + (self.rank < extra))

    def stream(
        self,
        batches: Batches,
        epoch: int,
        seed: int,
        device: torch.device,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
    ) -> Iterator[Pair]:
        """This rank's rows of every batch of ``epoch``, on ``device``.

        Whole batches are augmented before slicing, with the single-process generator on every rank, so
        the augmented global batch is the single-process one; a loader's own batches (sharded by its
        sampler, whose ``set_epoch`` is called) are augmented with a per-rank generator.
        """
        shard = 0 if batches.whole else self.rank
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, stream=2, shard=shard))
        sampler = getattr(batches.loader, "sampler", None)
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        for x, y in batches.epoch(epoch):
            if batches.whole:
                if augment is not None:
                    x = augment(x, generator)
                part = self.rows(x.shape[0])
                x, y = x[part], y[part]
            elif augment is not None:
                x = augment(x, generator)
            yield x.to(device), y.to(device)

    def step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        penalty: PMHPenalty | None,
        budget: LossBudget | None,
        strength: float,
        fraction: float,
        epoch: int,
        step: int,
    ) -> tuple[float, float, float]:
        """Forward and backward on this rank's rows with the weights above, then sum the gradients.

        Returns the global mean task loss, mean raw penalty and applied ratio c·P/L (NaN with a budget).
        """
        n = x.shape[0]
        k = 0 if penalty is None or n == 0 else max(1, math.ceil(fraction * n))
        task_sum = pen_sum = None
        if n > 0 and penalty is None:
            task_sum = cross_entropy(model(x), y, reduction="sum")
        elif n > 0 and penalty is not None:
            out = penalty(model, x[:k])
            logits = out.output if k == n else torch.cat([out.output, model(x[k:])])
            task_sum = cross_entropy(logits, y, reduction="sum")
            pen_sum = out.value * k
        device = x.device
        local = [float(task_sum.detach()) if task_sum is not None else 0.0]
        local += [float(pen_sum.detach()) if pen_sum is not None else 0.0, float(n), float(k)]
        task_total, pen_total, big_n, big_k = self.total(local)
        task_mean, pen_mean = task_total / big_n, (pen_total / big_k if big_k > 0 else 0.0)
        task = _global_value(task_sum, task_mean, big_n, device)
        value = _global_value(pen_sum, pen_mean, big_k, device)
        if penalty is None:
            loss, ratio = task, 0.0
        elif budget is not None:
            loss, ratio = budget.combine(task, value, strength), math.nan
        else:
            loss = task + strength * value
            ratio = strength * pen_mean / max(task_mean, 1e-12)
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}; lower lr or strength")
        if loss.requires_grad:
            loss.backward()
        self.sum_gradients([p for p in model.parameters() if p.requires_grad])
        return task_mean, pen_mean, ratio

    def sum_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """All-reduce (sum) the gradients; a parameter without a gradient on every rank keeps ``None``."""
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for group in by_dtype.values():
            parts = [torch.zeros_like(p) if p.grad is None else p.grad for p in group]
            flags = torch.tensor([p.grad is not None for p in group], dtype=group[0].dtype)
            flat = torch.cat([t.reshape(-1).to(self.comm) for t in (*parts, flags)])
            dist.all_reduce(flat, group=self.group)
            present = flat[-len(group) :].cpu().tolist()
            offset = 0
            for i, p in enumerate(group):
                piece = flat[offset : offset + p.numel()].view_as(p).to(p.device)
                offset += p.numel()
                if present[i] == 0:
                    p.grad = None
                elif p.grad is None:
                    p.grad = piece.clone()
                else:
                    p.grad.copy_(piece)

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (e.g. BatchNorm running statistics, updated on local rows) everywhere."""
        buffers = list(model.buffers())
        if buffers:
            self.broadcast(buffers)

    def accuracy(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy on ``(x, y)``, each rank predicting its slice of the rows."""
        part = self.rows(x.shape[0])
        correct = 0.0
        if part.stop > part.start:
            correct = float((predictions(model, x[part]) == y[part].cpu()).sum())
        right, total = self.total([correct, float(part.stop - part.start)])
        return right / total

    def barrier(self) -> None:
        """Wait for every rank (an all-reduce on this backend's device, so NCCL needs no device guess)."""
        self.total([0.0])


def single_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    penalty: PMHPenalty | None,
    budget: LossBudget | None,
    strength: float,
    fraction: float,
    epoch: int,
    step: int,
) -> tuple[float, float, float]:
    """Single-process forward and backward on the whole batch: task loss, raw penalty, applied ratio
    c·P/L (NaN with a budget)."""
    if penalty is None:
        task = cross_entropy(model(x), y)
        loss, value, ratio = task, 0.0, 0.0
    else:
        k = max(1, math.ceil(fraction * x.shape[0]))
        out = penalty(model, x[:k])
        logits = out.output if k == x.shape[0] else torch.cat([out.output, model(x[k:])])
        task = cross_entropy(logits, y)
        value = float(out.value.detach())
        if budget is not None:
            loss = budget.combine(task, out.value, strength)
            ratio = math.nan
        else:
            loss = task + strength * out.value
            ratio = strength * value / max(float(task.detach()), 1e-12)
    if not bool(torch.isfinite(loss.detach())):
        raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}; lower lr or strength")
    loss.backward()
    return float(task.detach()), value, ratio


def _place(device: torch.device) -> torch.device:
    if device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))


def _global_value(
    local: torch.Tensor | None, mean: float, count: float, device: torch.device
) -> torch.Tensor:
    """A scalar whose value is the global ``mean`` and whose gradient is ``∇ local / count``."""
    constant = torch.tensor(mean, device=device)
    if local is None:
        return constant
    return constant.to(local.dtype) + (local - local.detach()) / count
