"""shiftlab.generative: move a pretrained generator's output distribution with optimal transport.

- Models and pretraining: :class:`Generator` / :class:`Critic` (MLPs), :class:`ConvGenerator` /
  :class:`ConvCritic` (8x8 and 28x28 images), :func:`pretrain_wgan_gp` (one- or two-sided penalty).
- Samplers: :class:`GaussianMixture`, :func:`four_gaussians`, :func:`evidence_domains`,
  :func:`broadened_kde`.
- Perturbation: :class:`TargetPerturber` (Section 2, towards a target sample) and
  :class:`EvidencePerturber` (Section 3, towards evidence domains), configured by :class:`PerturbConfig`,
  returning a :class:`PerturbResult` report.
- Congested transport (Milne & Nachman 2022): :func:`congestion_cost`, :func:`congestion_flow`,
  :func:`interpolation_points`, :func:`relative_capacity`, :func:`cap_speed`.
- Metrics: :func:`compare_samples` (exact W2, sliced W2, debiased Sinkhorn, with units),
  :func:`mode_coverage`.
- The 2-D toy end to end (what the CLI runs): :func:`run_toy` returning a :class:`ToyReport`.

POT is needed for exact plans and W2 (``pip install 'shiftlab[ot]'``); it is imported only when used.
"""

from __future__ import annotations

from shiftlab.generative._config import PerturbConfig
from shiftlab.generative._congestion import (
    cap_speed,
    congestion_cost,
    congestion_flow,
    interpolation_points,
    relative_capacity,
)
from shiftlab.generative._metrics import ModeCoverage, SampleDistances, compare_samples, mode_coverage
from shiftlab.generative._models import ConvCritic, ConvGenerator, Critic, Generator
from shiftlab.generative._perturb import EvidencePerturber, TargetPerturber
from shiftlab.generative._pretrain import PretrainResult, gradient_penalty, pretrain_wgan_gp
from shiftlab.generative._pullback import PullbackStep, least_squares_step, trust_region
from shiftlab.generative._result import PerturbResult, StepRecord
from shiftlab.generative._samplers import (
    KDE_SCHEDULES,
    BroadenedKDE,
    GaussianMixture,
    Sampler,
    broadened_kde,
    evidence_domains,
    four_gaussians,
)
from shiftlab.generative._toy import ToyReport, run_toy

__all__ = [
    "KDE_SCHEDULES",
    "BroadenedKDE",
    "ConvCritic",
    "ConvGenerator",
    "Critic",
    "EvidencePerturber",
    "GaussianMixture",
    "Generator",
    "ModeCoverage",
    "PerturbConfig",
    "PerturbResult",
    "PretrainResult",
    "PullbackStep",
    "SampleDistances",
    "Sampler",
    "StepRecord",
    "TargetPerturber",
    "ToyReport",
    "broadened_kde",
    "cap_speed",
    "compare_samples",
    "congestion_cost",
    "congestion_flow",
    "evidence_domains",
    "four_gaussians",
    "gradient_penalty",
    "interpolation_points",
    "least_squares_step",
    "mode_coverage",
    "pretrain_wgan_gp",
    "relative_capacity",
    "run_toy",
    "trust_region",
]
