"""Fixtures for the shiftlab.audit tests: planted-truth runs and a few real training runs on UCI digits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from shiftlab.audit import fim_norm
from shiftlab.data import load


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensors: one intra-op thread avoids thread-pool contention on a shared CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def _planted(rng: np.random.Generator, n: int, partial: float) -> dict[str, np.ndarray]:
    """Runs where early validation loss drives the target and a metric has independent signal.

    ``target = -2 loss + s + e_y`` and ``metric = loss + s + e_m`` with ``s`` independent of ``loss``: the
    Pearson partial correlation of metric and target given the loss is ``partial``. With ``partial = 0``
    there is no ``s``: ``target = -loss + e_y``, ``metric = loss + e_m``, a pure loss proxy.
    """
    loss = rng.normal(size=n)
    if partial == 0:
        return {
            "val_loss": loss,
            "acc": -loss + 0.7 * rng.normal(size=n),
            "metric": loss + 0.7 * rng.normal(size=n),
        }
    shared = rng.normal(size=n)
    noise = np.sqrt(1 / partial - 1)
    return {
        "val_loss": loss,
        "acc": -2.0 * loss + shared + noise * rng.normal(size=n),
        "metric": loss + shared + noise * rng.normal(size=n),
    }


@pytest.fixture
def planted() -> Callable[[np.random.Generator, int, float], dict[str, np.ndarray]]:
    """The planted-truth run generator (a fixture, so that test modules need not import conftest)."""
    return _planted


def _train(
    width: int,
    noise: float,
    seed: int,
    x: torch.Tensor,
    y: torch.Tensor,
    xv: torch.Tensor,
    yv: torch.Tensor,
    xt: torch.Tensor,
    yt: torch.Tensor,
) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    labels = y.clone()
    flip = torch.rand(len(y), generator=gen) < noise
    labels[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    model = nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.functional.cross_entropy
    row: dict[str, float] = {}
    for epoch in range(80):
        opt.zero_grad()
        loss_fn(model(x), labels).backward()
        opt.step()
        if epoch == 4:
            with torch.no_grad():
                row["early_val_loss"] = float(loss_fn(model(xv), yv))
            row["fim_norm_early"] = fim_norm(model, loss_fn, x, labels, n=48, seed=seed).value
    with torch.no_grad():
        row["test_acc"] = float((model(xt).argmax(1) == yt).float().mean())
    row["fim_norm"] = fim_norm(model, loss_fn, x, labels, n=48, seed=seed).value
    return row


@pytest.fixture(scope="session")
def digit_runs() -> dict[str, np.ndarray]:
    """12 small MLPs trained on real UCI digits: width x label noise x 3 seeds (a few seconds)."""
    train, test = load("digits", "train"), load("digits", "test")
    x_all, y_all = train.images.flatten(1), train.labels
    x, y, xv, yv = x_all[:600], y_all[:600], x_all[1000:], y_all[1000:]
    xt, yt = test.images.flatten(1), test.labels
    rows = []
    for width in (8, 64):
        for noise in (0.0, 0.4):
            for seed in range(3):
                row = _train(width, noise, seed, x, y, xv, yv, xt, yt)
                rows.append({"width": width, "label_noise": noise, "seed": seed, **row})
    return {key: np.asarray([r[key] for r in rows]) for key in rows[0]}
