"""shiftlab.pmh: the deploy-shift gate (Perturbation Matching).

Estimate the label-preserving deploy nuisance Σ_task as a :class:`NuisanceEstimate` with one of seven
estimators (``estimate_nuisance(kind, ...)`` or the functions directly), let :func:`suggest_nuisance`
pick one from the data you have, check whether the shift is same-label with :func:`check_applicability`,
and whether an estimate's subspace is well separated with :func:`eigengap_check`.

Examples
--------
>>> import torch
>>> from shiftlab.pmh import estimate_nuisance
>>> g = torch.Generator().manual_seed(0)
>>> source, target = torch.randn(300, 6, generator=g), torch.randn(300, 6, generator=g) + 1.0
>>> estimate_nuisance("domain", source=source, target=target, rank=1).rank
1
"""

from __future__ import annotations

from shiftlab.pmh._applicability import ApplicabilityConfig, ApplicabilityReport, check_applicability
from shiftlab.pmh._arms import DEFAULT_STRENGTHS, run_arms
from shiftlab.pmh._arms_data import ArmsData
from shiftlab.pmh._arms_plan import ESTIMATE_KINDS
from shiftlab.pmh._arms_result import PENALTY_ARMS, REFERENCE_ARMS, ArmRun, ArmsResult, Candidate
from shiftlab.pmh._augment import DIGIT_AUGMENTATIONS, random_rescale, random_shift, thicken_strokes
from shiftlab.pmh._budget import BudgetEpoch, LossBudget
from shiftlab.pmh._controls import MODES, control_estimate
from shiftlab.pmh._deploy_metric import METRICS, DeployMetric
from shiftlab.pmh._digits import DigitsBudget, digits_budget, digits_mlp
from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators import (
    ESTIMATORS,
    EigengapCheck,
    NuisanceSuggestion,
    eigengap_check,
    estimate_nuisance,
    suggest_nuisance,
)
from shiftlab.pmh._estimators_domain import domain, subspace
from shiftlab.pmh._estimators_moments import compositional, isotropic, temporal
from shiftlab.pmh._estimators_pairs import adversarial, augmentation, style
from shiftlab.pmh._frozen import FrozenConfig, FrozenReport, evaluate_frozen
from shiftlab.pmh._matcher import PMHMatcher
from shiftlab.pmh._metrics import Drift, deploy_drift, sensitivity_ratio
from shiftlab.pmh._penalty import ESTIMATORS as PENALTY_ESTIMATORS
from shiftlab.pmh._penalty import PenaltyOutput, PMHPenalty
from shiftlab.pmh._reference import coral_map, mix_augmentations, with_target_rows
from shiftlab.pmh._routes import ROUTES, Route, RouteTable, route_table
from shiftlab.pmh._train_config import BudgetSettings, TrainConfig
from shiftlab.pmh._trainer import EpochLog, FitResult, PMHTrainer
from shiftlab.pmh._try import PMHReport, try_pmh
from shiftlab.pmh._verdict import EXIT_CODES, Comparison, ShipVerdict, VerdictConfig, ship_verdict

__all__ = [
    "DEFAULT_STRENGTHS",
    "DIGIT_AUGMENTATIONS",
    "ESTIMATE_KINDS",
    "ESTIMATORS",
    "EXIT_CODES",
    "METRICS",
    "MODES",
    "PENALTY_ARMS",
    "PENALTY_ESTIMATORS",
    "REFERENCE_ARMS",
    "ROUTES",
    "ApplicabilityConfig",
    "ApplicabilityReport",
    "ArmRun",
    "ArmsData",
    "ArmsResult",
    "BudgetEpoch",
    "BudgetSettings",
    "Candidate",
    "Comparison",
    "DeployMetric",
    "DigitsBudget",
    "Drift",
    "EigengapCheck",
    "EpochLog",
    "FitResult",
    "FrozenConfig",
    "FrozenReport",
    "LossBudget",
    "NuisanceEstimate",
    "NuisanceSuggestion",
    "PMHMatcher",
    "PMHPenalty",
    "PMHReport",
    "PMHTrainer",
    "PenaltyOutput",
    "Route",
    "RouteTable",
    "ShipVerdict",
    "TrainConfig",
    "VerdictConfig",
    "adversarial",
    "augmentation",
    "check_applicability",
    "compositional",
    "control_estimate",
    "coral_map",
    "deploy_drift",
    "digits_budget",
    "digits_mlp",
    "domain",
    "eigengap_check",
    "estimate_nuisance",
    "evaluate_frozen",
    "isotropic",
    "mix_augmentations",
    "random_rescale",
    "random_shift",
    "route_table",
    "run_arms",
    "sensitivity_ratio",
    "ship_verdict",
    "style",
    "subspace",
    "suggest_nuisance",
    "temporal",
    "thicken_strokes",
    "try_pmh",
    "with_target_rows",
]
