"""Training data plumbing for the PMH trainer: validation, seeded batches, accuracy, a progress bar."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftlab.pmh._estimators_common import to_model

Pair = tuple[torch.Tensor, torch.Tensor]


def epoch_seed(seed: int, epoch: int, *, stream: int = 0) -> int:
    """A 32-bit seed for ``(seed, epoch, stream)``: independent streams for data order, probes, ...

    Examples
    --------
    >>> epoch_seed(0, 1) == epoch_seed(0, 1), epoch_seed(0, 1) == epoch_seed(0, 2)
    (True, False)
    """
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


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
    """Per-epoch batch streams with a known number of steps (``None`` when the iterable has no length)."""

    def __init__(self, make: Callable[[int], Iterable[Pair]], steps: int | None) -> None:
        self._make = make
        self.steps = steps

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
        return cls(lambda _epoch: data, steps)


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Batches:
    """Batches of ``(x, y)`` in the order ``randperm(n)`` seeded by ``(seed, epoch)``."""
    n = x.shape[0]

    def make(epoch: int) -> Iterator[Pair]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            yield x[rows], y[rows]

    return Batches(make, -(-n // batch_size))


def predictions(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Arg-max class of ``model(x)`` in eval mode, without gradients; the model's mode is restored."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = model(to_model(x[start : start + batch_size], model))
            out.append(logits.argmax(dim=1).cpu())
    model.train(was_training)
    return torch.cat(out)


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
