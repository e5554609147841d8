"""Settings of the metric audit: one frozen, validated dataclass, YAML in and out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shiftlab.report import atomic_write_text

__all__ = ["NUISANCE_MODELS", "MBEConfig"]

#: Nuisance models for the partial correlation: least squares on the baselines, or cross-fitted
#: Gaussian-kernel ridge regression (:func:`shiftlab.functional.crossfit.crossfit_residuals`).
NUISANCE_MODELS = ("linear", "kernel_ridge")


def _unit(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number strictly between 0 and 1; got {value!r}")


def _count(value: object, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")


@dataclass(frozen=True)
class MBEConfig:
    """How the audit decides. Every number that changes a verdict is here.

    Attributes
    ----------
    alpha
        Level of every interval and test, and the false discovery rate of the Benjamini-Hochberg step
        across metrics x groups. 0.05 by convention.
    delta
        Equivalence margin for the partial correlation: a metric is a loss proxy only if its partial
        correlation is shown to lie inside ``±delta``. 0.1 is Cohen's "small" correlation: below it a metric
        explains under 1% of the variance left after the baselines.
    n_boot
        Bootstrap resamples per cell. 2000 keeps the Monte Carlo error of a 2.5% quantile near 0.3
        percentage points.
    power
        Power at which the minimum detectable effect of an inconclusive result is stated (0.8, the usual
        design target).
    method
        ``"spearman"`` (ranks of metric, target and numeric baselines; robust to monotone transforms and
        outliers, as the original protocol) or ``"pearson"``.
    nuisance
        ``"linear"`` (least squares on the baselines, re-fitted in every resample) or ``"kernel_ridge"``
        (cross-fitted nonlinear nuisance, for baselines that act nonlinearly).
    n_folds
        Folds of the cross-fitting (``nuisance="kernel_ridge"`` only).
    n_permutations
        Block permutations for the p-value of a per-step training-log series (``block_size`` given).
    seed
        Seed of every random draw (bootstrap, permutations, sanity controls, folds).
    sanity_controls
        Also audit a random metric, a permuted metric and the first numeric baseline as a metric.

    Examples
    --------
    >>> MBEConfig(delta=0.15).delta
    0.15
    >>> MBEConfig.from_dict(MBEConfig().to_dict()) == MBEConfig()
    True
    """

    alpha: float = 0.05
    delta: float = 0.1
    n_boot: int = 2000
    power: float = 0.8
    method: str = "spearman"
    nuisance: str = "linear"
    n_folds: int = 5
    n_permutations: int = 2000
    seed: int = 0
    sanity_controls: bool = True

    def __post_init__(self) -> None:
        _unit(self.alpha, "alpha")
        _unit(self.delta, "delta")
        _unit(self.power, "power")
        _count(self.n_boot, "n_boot", 1)
        if self.n_boot * self.alpha < 2:
            raise ValueError(
                f"n_boot={self.n_boot} is too small for alpha={self.alpha}: the 1 - 2 alpha interval of the "
                f"equivalence test needs n_boot >= {int(2 / self.alpha) + 1}"
            )
        if self.method not in ("spearman", "pearson"):
            raise ValueError(f"method must be 'spearman' or 'pearson'; got {self.method!r}")
        if self.nuisance not in NUISANCE_MODELS:
            raise ValueError(f"nuisance must be one of {NUISANCE_MODELS}; got {self.nuisance!r}")
        _count(self.n_folds, "n_folds", 2)
        _count(self.n_permutations, "n_permutations", 1)
        _count(self.seed, "seed", 0)
        if not isinstance(self.sanity_controls, bool):
            raise ValueError(f"sanity_controls must be a bool; got {self.sanity_controls!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MBEConfig:
        """Build from a dictionary; unknown keys raise, listing the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise ValueError(f"unknown MBEConfig keys {sorted(unknown)}; valid keys: {sorted(valid)}")
        return cls(**data)

    def to_yaml(self, path: str | Path) -> Path:
        """Write the configuration as YAML (atomically)."""
        import yaml

        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> MBEConfig:
        """Read a configuration written by :meth:`to_yaml` (safe loader)."""
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of MBEConfig fields")
        return cls.from_dict(data)
