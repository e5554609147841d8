"""``TrainConfig``: every number the PMH trainer uses, validated, with YAML in and out."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from shiftlab.pmh._budget import LossBudget
from shiftlab.pmh._penalty import ESTIMATORS
from shiftlab.report import atomic_write_text

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")


@dataclass(frozen=True)
class BudgetSettings:
    """Arguments of :class:`~shiftlab.pmh.LossBudget` (its defaults: a 5%–30% band, 10% warm-up, and a
    floor that may at most double λ; see ``LossBudget`` for where ``max_boost = 2`` comes from).

    Examples
    --------
    >>> BudgetSettings(max_ratio=0.5).build().max_ratio
    0.5
    >>> BudgetSettings().build().max_boost
    2.0
    """

    min_ratio: float = 0.05
    max_ratio: float = 0.30
    warmup: float = 0.1
    max_boost: float = 2.0

    def __post_init__(self) -> None:
        self.build()  # same validation, same messages

    def build(self) -> LossBudget:
        """A fresh :class:`LossBudget` with these settings."""
        return LossBudget(self.min_ratio, self.max_ratio, self.warmup, self.max_boost)


def _number(name: str, value: Any, *, low: float, low_open: bool, high: float = math.inf) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        upper = "" if math.isinf(high) else f" and <= {high}"
        raise ValueError(f"TrainConfig.{name} must be a finite number {bound}{upper}; got {value!r}")


def _integer(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"TrainConfig.{name} must be an int >= {low}; got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :class:`~shiftlab.pmh.PMHTrainer` and :func:`~shiftlab.pmh.run_arms`.

    Attributes
    ----------
    epochs
        Passes over the training data (10: the 8×8 digits MLP of the demo has converged on 10,000
        source images by then).
    batch_size
        Rows per step (128, a common default that keeps a CPU step cheap); in a data-parallel run
        (:class:`~shiftlab.pmh.PMHTrainer` under ``torchrun``) the global batch, split between the ranks.
    lr
        Learning rate (1e-3, Adam's usual default).
    optimizer
        ``"adam"`` (default: robust across the penalised and plain arms without per-arm tuning) or
        ``"sgd"`` (with ``momentum``).
    momentum
        SGD momentum (0.9, the usual value; ignored by Adam).
    weight_decay
        L2 weight decay of the optimizer (0: no regulariser other than the penalty, so arms differ only
        by their Σ).
    strength
        Penalty strength λ in ``task + λ · E tr(J Σ' Jᵀ)`` (0.1: measured on MNIST → UCI digits, the
        strongest value that keeps source validation within about 3 points; :func:`run_arms` searches a
        grid instead).
    budget
        :class:`BudgetSettings` of the loss budget that keeps λ·penalty / task inside a band, or ``None``
        (default) for the plain sum. Off by default because with the budget on the band, not λ, sets
        the penalty's weight, which makes a λ grid meaningless.
    estimator
        Penalty estimator (``"fd"`` default: one finite-difference probe costs about one extra forward
        pass, measured 2× a plain step on CPU; ``"hutchinson"`` is unbiased; ``"jvp"`` exact, cost ∝ rank).
    n_probes
        Random probes per sample for ``"fd"``/``"hutchinson"`` (1: unbiased already, and the cheapest).
    fd_step
        Finite-difference step ε in site units (1e-2, the penalty's default for inputs in [0, 1]).
    penalty_fraction
        Fraction of each batch the penalty is computed on, in (0, 1] (1: the whole batch; the estimate
        stays unbiased on a random fraction, and the task loss always uses the whole batch).
    reestimate_every
        Re-estimate Σ with the model being trained every this many epochs (0 = never); needs an estimate
        made with :meth:`PMHTrainer.estimate` from a model-based estimator.
    device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    seed
        Seeds the data order, the penalty's probes and the ``wrong`` control's subspace (0).

    Examples
    --------
    >>> TrainConfig(epochs=3).epochs
    3
    >>> TrainConfig(optimizer="lbfgs")
    Traceback (most recent call last):
    ...
    ValueError: TrainConfig.optimizer must be one of ('adam', 'sgd'); got 'lbfgs'
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    strength: float = 0.1
    budget: BudgetSettings | None = None
    estimator: Literal["fd", "hutchinson", "jvp"] = "fd"
    n_probes: int = 1
    fd_step: float = 1e-2
    penalty_fraction: float = 1.0
    reestimate_every: int = 0
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        _integer("epochs", self.epochs, low=1)
        _integer("batch_size", self.batch_size, low=1)
        _integer("n_probes", self.n_probes, low=1)
        _integer("reestimate_every", self.reestimate_every, low=0)
        _integer("seed", self.seed, low=0)
        _number("lr", self.lr, low=0.0, low_open=True)
        _number("momentum", self.momentum, low=0.0, low_open=False, high=1.0)
        _number("weight_decay", self.weight_decay, low=0.0, low_open=False)
        _number("strength", self.strength, low=0.0, low_open=False)
        _number("fd_step", self.fd_step, low=0.0, low_open=True)
        _number("penalty_fraction", self.penalty_fraction, low=0.0, low_open=True, high=1.0)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"TrainConfig.estimator must be one of {ESTIMATORS}; got {self.estimator!r}")
        if self.budget is not None and not isinstance(self.budget, BudgetSettings):
            raise TypeError(
                f"TrainConfig.budget must be a BudgetSettings or None; got {type(self.budget).__name__}"
            )
        if not isinstance(self.device, str):
            raise TypeError(f"TrainConfig.device must be a str; got {type(self.device).__name__}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise ValueError(
                    f"TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}"
                ) from err

    def resolved_device(self) -> torch.device:
        """The device training runs on (``"auto"`` → CUDA when available, else CPU)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of every field (``budget`` as a nested dict or ``None``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys raise a ``ValueError`` listing the valid ones.

        Examples
        --------
        >>> TrainConfig.from_dict({"budget": {"max_ratio": 0.5}}).budget.max_ratio
        0.5
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a TrainConfig mapping is needed; got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; valid keys: {valid}")
        values = dict(data)
        budget = values.get("budget")
        if isinstance(budget, Mapping):
            fields = [f.name for f in dataclasses.fields(BudgetSettings)]
            extra = sorted(set(budget) - set(fields))
            if extra:
                raise ValueError(f"unknown TrainConfig.budget key(s) {extra}; valid keys: {fields}")
            values["budget"] = BudgetSettings(**budget)
        return cls(**values)

    def to_yaml(self, path: str | os.PathLike[str]) -> Path:
        """Write the config as YAML, atomically."""
        import yaml

        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a config written by :meth:`to_yaml` (or by hand); missing keys keep their defaults."""
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return cls.from_dict(data or {})
