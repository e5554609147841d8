"""Training data plumbing for the PMH trainer: validation, seeded batches, accuracy, a progress bar, and
the records a fit returns (:class:`EpochLog`, :class:`FitResult`)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators_common import to_model
from shiftlab.pmh._layers import eval_mode

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class EpochLog:
    """One epoch: mean task loss, mean raw penalty, mean applied ratio c·P/L, validation accuracy
    (``None`` without ``val``), steps, wall seconds, whether Σ was re-estimated after it, and the steps
    where the budget's floor stopped at ``max_boost`` · λ below the band."""

    epoch: int
    task_loss: float
    penalty: float
    applied_ratio: float
    val_accuracy: float | None
    steps: int
    seconds: float
    reestimated: bool = False
    boost_capped: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    """What :meth:`PMHTrainer.fit` returns: the trained copy, the epoch logs and the final Σ.

    ``estimate`` is the matched Σ at the end (after any re-estimation; ``None`` for plain training),
    ``mode`` the arm, ``strength`` λ, ``resumed_from`` the epoch training resumed at (``None`` if fresh).
    """

    model: nn.Module
    history: tuple[EpochLog, ...]
    estimate: NuisanceEstimate | None
    mode: str
    strength: float
    resumed_from: int | None


def epoch_seed(seed: int, epoch: int, *, stream: int = 0, shard: int = 0) -> int:
    """A 32-bit seed for ``(seed, epoch, stream)``: independent streams for data order, probes, ...

    ``shard`` > 0 (a data-parallel rank) gives another independent stream; shard 0 is the
    single-process stream.

    Examples
    --------
    >>> epoch_seed(0, 1) == epoch_seed(0, 1), epoch_seed(0, 1) == epoch_seed(0, 2)
    (True, False)
    >>> epoch_seed(0, 1, shard=0) == epoch_seed(0, 1), epoch_seed(0, 1, shard=1) == epoch_seed(0, 1)
    (True, False)
    """
    entropy = [seed, epoch, stream] if shard == 0 else [seed, epoch, stream, shard]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def check_xy(pair: Any, name: str) -> Pair:
    """``(x, y)``: float finite ``x`` of shape ``(n, ...)``, integer labels ``y`` of shape ``(n,)``, n ≥ 1."""
    if not (isinstance(pair, tuple) and len(pair) == 2):
        raise TypeError(f"{name} must be an (x, y) tuple of tensors; got {type(pair).__name__}")
    x, y = pair
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must hold torch tensors; got ({type(x).__name__}, {type(y).__name__})")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} x must be a non-empty batch of shape (n, ...); got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} x must be floating point; got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} x contains NaN or Inf")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"{name} y must hold integer class labels; got {y.dtype}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{name} y must have shape ({x.shape[0]},), one label per row; got {tuple(y.shape)}")
    if bool((y < 0).any()):
        raise ValueError(f"{name} y holds negative labels; labels are class indices 0..C-1")
    return x, y.long()


class Batches:
    """Per-epoch batch streams with a known number of steps (``None`` when the iterable has no length).

    ``whole`` says whether every process sees the same whole batches (the seeded ``(x, y)`` path, which a
    data-parallel run splits between ranks) or its own batches (a loader, sharded by the user's
    sampler).
    """

    def __init__(self, make: Callable[[int], Iterable[Pair]], steps: int | None, *, whole: bool) -> None:
        self._make = make
        self.steps = steps
        self.whole = whole
        self.loader: Any = None

    def epoch(self, epoch: int) -> Iterator[Pair]:
        """The batches of epoch ``epoch``."""
        for batch in self._make(epoch):
            if not (isinstance(batch, tuple | list) and len(batch) == 2):
                raise TypeError(f"each training batch must be an (x, y) pair; got {type(batch).__name__}")
            x, y = batch
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError("each training batch must hold (x, y) tensors")
            yield x, y

    @classmethod
    def from_iterable(cls, data: Iterable[Any]) -> Batches:
        """Wrap a ``DataLoader`` (or any re-iterable of ``(x, y)`` batches)."""
        steps = len(data) if isinstance(data, Sized) else None
        if steps == 0:
            raise ValueError("the training loader is empty")
        if steps is None and iter(data) is data:
            raise TypeError("train is a one-shot iterator; pass a re-iterable loader (e.g. a DataLoader)")
        batches = cls(lambda _epoch: data, steps, whole=False)
        batches.loader = data
        return batches


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Batches:
    """Batches of ``(x, y)`` in the order ``randperm(n)`` seeded by ``(seed, epoch)``."""
    n = x.shape[0]

    def make(epoch: int) -> Iterator[Pair]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            yield x[rows], y[rows]

    return Batches(make, -(-n // batch_size), whole=True)


def on_device(
    batches: Iterable[Pair],
    device: torch.device,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
    generator: torch.Generator,
) -> Iterator[Pair]:
    """Each batch, augmented with ``generator`` when ``augment`` is given, on ``device``."""
    for x, y in batches:
        x = x if augment is None else augment(x, generator)
        yield x.to(device), y.to(device)


def model_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """``model(x)`` in eval mode without gradients, in batches, on the CPU; the model's mode is restored.

    Examples
    --------
    >>> net = nn.Linear(3, 2)
    >>> model_logits(net, torch.zeros(5, 3)).shape, net.training
    (torch.Size([5, 2]), True)
    """
    with eval_mode(model):
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                out.append(model(to_model(x[start : start + batch_size], model)).cpu())
    return torch.cat(out)


def predictions(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Arg-max class of ``model(x)`` in eval mode, without gradients; the model's modes are restored."""
    return model_logits(model, x, batch_size=batch_size).argmax(dim=1)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class equals ``y``."""
    return float((predictions(model, x) == y.cpu()).double().mean())


@contextlib.contextmanager
def progress(quiet: bool, total: int, label: str) -> Iterator[Callable[[str], None]]:
    """A rich progress bar on stderr (so JSON on stdout stays clean), or a no-op when ``quiet``.

    Yields ``advance(text)``: one step done, ``text`` says what it was.
    """
    if quiet:
        yield lambda _text: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)

        def advance(text: str) -> None:
            bar.update(task, advance=1, description=f"{label}: {text}")

        yield advance
