"""``ArmRun`` and ``ArmsResult``: what :func:`run_arms` measured, arm by arm and seed by seed."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._train_config import TrainConfig
from shiftlab.pmh._trainer import EpochLog

__all__ = ["PENALTY_ARMS", "REFERENCE_ARMS", "SELECTIONS", "ArmRun", "ArmsResult", "Candidate"]

#: Arms trained with the PMH penalty (``baseline`` is λ = 0) and the reference arms.
PENALTY_ARMS: tuple[str, ...] = ("baseline", "matched", "isotropic", "wrong", "signal")
REFERENCE_ARMS: tuple[str, ...] = ("augmentation", "target_rows", "coral")
#: Splits λ may be chosen on; ``"fixed"`` marks a run of an arm without λ (baseline, references).
SELECTIONS: tuple[str, ...] = ("source_val", "target_val")
FIXED = "fixed"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One strength λ of a penalised arm: its accuracies and deploy-metric values on both selection splits
    and the holdout (λ is chosen by the metric)."""

    strength: float
    source_val_accuracy: float
    target_val_accuracy: float | None
    deploy_accuracy: float
    source_val_score: float
    target_val_score: float | None
    deploy_score: float


@dataclasses.dataclass(frozen=True, eq=False)
class ArmRun:
    """One arm × seed (× selection split for penalised arms).

    Attributes
    ----------
    arm, seed
        Which arm and seed.
    selection
        ``"source_val"`` or ``"target_val"`` (the split λ was chosen on), ``"fixed"`` for arms without λ.
    strength
        The chosen λ (0 for baseline and reference arms).
    correct
        bool ``(n_holdout,)``: is each deploy-holdout row classified correctly.
    scores, deploy_score
        float64 ``(n_holdout,)`` per-example deploy-metric scores and their mean (equal to ``correct``
        and ``deploy_accuracy`` for the ``accuracy`` metric).
    deploy_accuracy, source_val_accuracy, target_val_accuracy
        Accuracy on the holdout, the source validation split, the target validation split (or ``None``).
    drift_sigma, drift_complement
        Deploy drift along Σ's low-rank part and along an equal-trace draw on its complement (for a
        model-based Σ, re-estimated with this run's trained model).
    sensitivity_ratio
        Per-unit-trace Jacobian gain along Σ over the complement.
    history
        Epoch logs of the chosen run.
    candidates
        Every λ tried for this arm and seed (one entry for arms without λ).
    """

    arm: str
    seed: int
    selection: str
    strength: float
    correct: torch.Tensor
    scores: torch.Tensor
    deploy_score: float
    deploy_accuracy: float
    source_val_accuracy: float
    target_val_accuracy: float | None
    drift_sigma: float
    drift_complement: float
    sensitivity_ratio: float
    history: tuple[EpochLog, ...]
    candidates: tuple[Candidate, ...]


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class ArmsResult:
    """All runs of :func:`run_arms`, with helpers that line them up by seed for paired statistics.

    Attributes
    ----------
    runs
        Every :class:`ArmRun`.
    estimate
        The matched Σ (for a model-based estimate: the first seed's; ``estimates`` holds all).
    selection
        ``"source_val"``, ``"target_val"`` or ``"both"``.
    split_hashes
        SHA-256 of each split (indices when known, else rows) and of the rows Σ was estimated from.
    arms, seeds, strengths
        What was run.
    config
        The :class:`TrainConfig` (its ``seed`` and ``strength`` are set per run).
    estimation
        In words: which rows estimated Σ, and how their disjointness from the holdout was checked.
    estimates
        Seed → matched Σ used for that seed.
    metric
        Name of the deploy metric λ was chosen by and the verdict compares.
    """

    runs: tuple[ArmRun, ...]
    estimate: NuisanceEstimate
    selection: str
    split_hashes: Mapping[str, str]
    arms: tuple[str, ...]
    seeds: tuple[int, ...]
    strengths: tuple[float, ...]
    config: TrainConfig
    estimation: str
    estimates: Mapping[int, NuisanceEstimate]
    metric: str = "accuracy"

    @property
    def selections(self) -> tuple[str, ...]:
        """The selection splits present (one, or both)."""
        return SELECTIONS if self.selection == "both" else (self.selection,)

    @property
    def primary_selection(self) -> str:
        """The split a single answer uses: the declared one, or ``"target_val"`` with ``"both"``
        (the labelled target split is the one that can pick a non-trivial λ; measured on MNIST → UCI
        digits, source validation picks the weakest penalty)."""
        return "target_val" if self.selection == "both" else self.selection

    def runs_for(self, arm: str, selection: str | None = None) -> tuple[ArmRun, ...]:
        """The runs of ``arm`` ordered by seed (for ``selection``, default :attr:`primary_selection`)."""
        if arm not in self.arms:
            raise ValueError(f"arm {arm!r} was not run; arms: {', '.join(self.arms)}")
        sel = self.primary_selection if selection is None else selection
        if sel not in self.selections:
            raise ValueError(f"selection {sel!r} was not made; selections: {', '.join(self.selections)}")
        runs = [r for r in self.runs if r.arm == arm and r.selection in (sel, FIXED)]
        order = {s: i for i, s in enumerate(self.seeds)}
        return tuple(sorted(runs, key=lambda r: order[r.seed]))

    def correctness(self, arm: str, selection: str | None = None) -> torch.Tensor:
        """bool ``(K seeds, n_holdout)``: per-example holdout correctness, rows in ``seeds`` order."""
        return torch.stack([r.correct for r in self.runs_for(arm, selection)])

    def scores(self, arm: str, selection: str | None = None) -> torch.Tensor:
        """float64 ``(K seeds, n_holdout)``: per-example deploy-metric scores, rows in ``seeds`` order."""
        return torch.stack([r.scores for r in self.runs_for(arm, selection)])

    def source_val(self, arm: str, selection: str | None = None) -> torch.Tensor:
        """float64 ``(K,)`` source-validation accuracy per seed."""
        runs = self.runs_for(arm, selection)
        return torch.tensor([r.source_val_accuracy for r in runs], dtype=torch.float64)

    def deploy(self, arm: str, selection: str | None = None) -> torch.Tensor:
        """float64 ``(K,)`` deploy-holdout accuracy per seed."""
        runs = self.runs_for(arm, selection)
        return torch.tensor([r.deploy_accuracy for r in runs], dtype=torch.float64)

    def table(self) -> list[dict[str, Any]]:
        """One row per arm and selection split: means ± std over seeds and the λ chosen per seed.

        Columns: ``arm, selection, strengths, deploy_mean, deploy_std`` (accuracy), ``metric,
        metric_mean, metric_std`` (the deploy metric), ``source_val_mean, source_val_std, target_val_mean,
        drift_sigma, drift_complement, drift_ratio, sensitivity_ratio, seeds``
        (arms without λ appear once, with selection ``"fixed"``). See :func:`run_arms` for an example.
        """
        rows: list[dict[str, Any]] = []
        for arm in self.arms:
            fixed = all(r.selection == FIXED for r in self.runs if r.arm == arm)
            for sel in self.selections[:1] if fixed else self.selections:
                runs = self.runs_for(arm, sel)
                deploy = _mean_std([r.deploy_accuracy for r in runs])
                score = _mean_std([r.deploy_score for r in runs])
                source = _mean_std([r.source_val_accuracy for r in runs])
                target = [r.target_val_accuracy for r in runs if r.target_val_accuracy is not None]
                along = _mean_std([r.drift_sigma for r in runs])[0]
                other = _mean_std([r.drift_complement for r in runs])[0]
                rows.append(
                    {
                        "arm": arm,
                        "selection": FIXED if fixed else sel,
                        "strengths": [r.strength for r in runs],
                        "deploy_mean": deploy[0],
                        "deploy_std": deploy[1],
                        "metric": self.metric,
                        "metric_mean": score[0],
                        "metric_std": score[1],
                        "source_val_mean": source[0],
                        "source_val_std": source[1],
                        "target_val_mean": _mean_std(target)[0],
                        "drift_sigma": along,
                        "drift_complement": other,
                        "drift_ratio": along / other if other > 0 else math.nan,
                        "sensitivity_ratio": _mean_std([r.sensitivity_ratio for r in runs])[0],
                        "seeds": len(runs),
                    }
                )
        return rows
