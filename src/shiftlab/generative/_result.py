"""``PerturbResult``: what a perturbation run returns (a :class:`~shiftlab.report.Report` with history)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from shiftlab.generative._config import PerturbConfig
from shiftlab.report import Report, Table, jsonable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PerturbResult", "StepRecord"]

Status = Literal["converged", "stopped", "diverged"]

# fields that hold objects rather than results: kept out of JSON
_NOT_SERIALISED = ("generator", "samples_before", "samples_after", "samples_target")


@dataclass(frozen=True)
class StepRecord:
    """One step of a perturbation run.

    Attributes
    ----------
    step : int
        0-based step index.
    w2 : float
        Validation W2 after the accept/reject decision (data units).
    candidate_w2 : float
        Validation W2 of the proposed parameters.
    accepted : bool
        Whether the proposal was kept.
    step_scale : float
        Scale applied to the capped particle step (halved after each rejection).
    residual : float
        Linearised :math:`\\lVert J\\delta - b\\rVert / \\lVert b\\rVert` of the pullback.
    cg_iterations : int
        CGLS iterations used.
    trust_factor : float
        Smallest trust-region shrink factor (1: inactive).
    cap_factor : float
        Further shrink applied so that realised moves respect the caps (1: none needed).
    delta_norm : float
        :math:`\\lVert\\delta\\theta\\rVert` of the proposal after the trust region.
    drift : float
        :math:`\\lVert\\theta - \\theta_0\\rVert` after the decision.
    drift_per_layer : dict of str to float
        The same per layer.
    requested_cap_ratio : float
        :math:`\\max_i \\lVert b_i\\rVert / \\kappa_i` of the requested particle steps (:math:`\\le 1` by
        construction).
    realized_cap_ratio_p95, realized_cap_ratio_max : float
        95th percentile and maximum of
        :math:`\\lVert G_{\\theta+\\delta}(z_i) - G_\\theta(z_i)\\rVert / \\kappa_i`
        on the step's particles: how far the realised (nonlinear, least-squares) motion respects the cap.
    seconds, seconds_field, seconds_update, seconds_validation : float
        Wall time of the step and of its three parts (displacement field, weight update, validation W2).
    """

    step: int
    w2: float
    candidate_w2: float
    accepted: bool
    step_scale: float
    residual: float
    cg_iterations: int
    trust_factor: float
    cap_factor: float
    delta_norm: float
    drift: float
    drift_per_layer: dict[str, float]
    requested_cap_ratio: float
    realized_cap_ratio_p95: float
    realized_cap_ratio_max: float
    seconds: float
    seconds_field: float
    seconds_update: float
    seconds_validation: float


@dataclass(frozen=True)
class PerturbResult(Report):
    """Result of :class:`TargetPerturber` or :class:`EvidencePerturber`.

    Attributes
    ----------
    section : str
        ``"target"`` (Section 2) or ``"evidence"`` (Section 3).
    status : str
        ``"converged"``, ``"stopped"`` or ``"diverged"``; ``reason`` says why.
    w2_initial, w2_final : float
        Exact W2 (data units) between the generator on the validation latents and the held-out target
        (pooled held-out evidence) before and after. These numbers took part in accept/reject; evaluate
        on fresh latents and fresh target draws for an unbiased figure.
    history : tuple of StepRecord
        One record per step.
    generator : torch.nn.Module
        The perturbed copy (the caller's model is never modified); not serialised.
    samples_before, samples_after, samples_target : torch.Tensor
        Validation samples (flattened) for the figures; not serialised.
    """

    kind: ClassVar[str] = "generative-perturb"

    section: str
    status: Status
    reason: str
    steps_run: int
    accepted_steps: int
    w2_initial: float
    w2_final: float
    seconds_total: float
    seconds_per_step_median: float
    n_parameters: int
    drift_per_layer: dict[str, float]
    data_shape: tuple[int, ...]
    device: str
    config: PerturbConfig
    history: tuple[StepRecord, ...]
    generator: nn.Module = dataclasses.field(repr=False, compare=False)
    samples_before: torch.Tensor = dataclasses.field(repr=False, compare=False)
    samples_after: torch.Tensor = dataclasses.field(repr=False, compare=False)
    samples_target: torch.Tensor = dataclasses.field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        body = {
            f.name: jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in _NOT_SERIALISED
        }
        return {"kind": self.kind, **body}

    def headline(self) -> str:
        return (
            f"{self.section} perturbation {self.status}: validation W2 {self.w2_initial:.3f} -> "
            f"{self.w2_final:.3f} in {self.steps_run} steps ({self.seconds_per_step_median:.3f} s/step)"
        )

    def w2_trajectory(self) -> list[float]:
        """Validation W2 before the first step and after every step."""
        return [self.w2_initial, *(r.w2 for r in self.history)]

    def tables(self) -> Sequence[Table]:
        steps = Table(
            "Steps",
            ("step", "W2", "candidate W2", "accepted", "scale", "residual", "trust", "drift", "seconds"),
            tuple(
                (
                    r.step,
                    r.w2,
                    r.candidate_w2,
                    r.accepted,
                    r.step_scale,
                    r.residual,
                    r.trust_factor,
                    r.drift,
                    r.seconds,
                )
                for r in self.history
            ),
        )
        drift = Table(
            "Final drift per layer", ("layer", "||theta - theta0||"), tuple(self.drift_per_layer.items())
        )
        return (steps, drift)

    def figures(self) -> Mapping[str, Figure]:
        from shiftlab.generative._figures import sample_figure, trajectory_figure

        return {
            "samples": sample_figure(
                self.samples_before,
                self.samples_after,
                self.samples_target,
                self.data_shape,
                "Section 2" if self.section == "target" else "Section 3",
            ),
            "w2 trajectory": trajectory_figure(self.w2_trajectory(), [r.drift for r in self.history]),
        }


def median_seconds(history: Sequence[StepRecord]) -> float:
    """Median wall time per step (NaN for an empty history)."""
    return statistics.median(r.seconds for r in history) if history else math.nan
