"""The 2-D toy end to end: pretrain on four Gaussians, perturb towards a shifted copy or towards evidence, and
evaluate on fresh draws (what ``shiftlab perturb target|evidence`` runs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from shiftlab.functional.transport import wasserstein2
from shiftlab.generative._config import PerturbConfig
from shiftlab.generative._metrics import ModeCoverage, mode_coverage
from shiftlab.generative._models import Critic, Generator
from shiftlab.generative._perturb import EvidencePerturber, TargetPerturber
from shiftlab.generative._pretrain import pretrain_wgan_gp
from shiftlab.generative._result import PerturbResult
from shiftlab.generative._samplers import GaussianMixture, evidence_domains, four_gaussians
from shiftlab.report import Report, Table, jsonable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ToyReport", "run_toy"]

#: Domain offsets of the evidence toy: three noisy versions of the (1.8, 1.8) shift.
EVIDENCE_OFFSETS = ((0.0, 0.0), (-0.3, 0.3), (0.3, -0.3))


@dataclass(frozen=True)
class ToyReport(Report):
    """A toy perturbation run plus an unbiased evaluation on fresh latents and fresh target draws.

    Attributes
    ----------
    test_w2_before, test_w2_after : float
        Exact W2 (data units) between the generator on ``n_test`` fresh scrambled-Sobol latents (a seed
        never used by the run) and ``n_test`` fresh stratified draws of the target distribution (the
        pooled evidence distributions for ``"evidence"``).
    test_w2_floor : float
        The same W2 between two independent draws of the target distribution: the sampling floor.
    coverage_before, coverage_after : ModeCoverage
        Mode occupancy on the test samples: before, of the source mixture's modes (what the pretrained
        generator covers); after, of the target's modes (for evidence: the base modes moved by the mean
        shift, radius widened by the spread of the domain offsets). Radius: 3 standard deviations.
    """

    kind: ClassVar[str] = "generative-toy"

    section: str
    test_w2_before: float
    test_w2_after: float
    test_w2_floor: float
    coverage_before: ModeCoverage
    coverage_after: ModeCoverage
    pretrain_seconds: float
    run: PerturbResult

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "run"}
        return {"kind": self.kind, **body, "run": self.run.to_dict()}

    def headline(self) -> str:
        return (
            f"toy {self.section}: test W2 {self.test_w2_before:.3f} -> {self.test_w2_after:.3f} "
            f"(floor {self.test_w2_floor:.3f}); {self.run.headline()}"
        )

    def fields(self) -> Mapping[str, Any]:
        out = {k: v for k, v in super().fields().items()}
        out.update({f"run.{k}": v for k, v in self.run.fields().items()})
        out["modes covered before / after"] = (
            f"{self.coverage_before.n_covered} / {self.coverage_after.n_covered}"
        )
        return out

    def tables(self) -> Sequence[Table]:
        occ = Table(
            "Mode occupancy (test samples)",
            ("mode", "expected", "before", "after"),
            tuple(
                (i, e, b, a)
                for i, (e, b, a) in enumerate(
                    zip(
                        self.coverage_before.expected,
                        self.coverage_before.occupancy,
                        self.coverage_after.occupancy,
                        strict=True,
                    )
                )
            ),
        )
        return (occ, *self.run.tables())

    def figures(self) -> Mapping[str, Figure]:
        return self.run.figures()


def _sobol_latents(n: int, dim: int, seed: int) -> torch.Tensor:
    u = torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed).draw(n, dtype=torch.float64)
    return torch.special.ndtri(u.clamp(1e-12, 1.0 - 1e-12)).float()


def _pooled(mixtures: Sequence[GaussianMixture], n: int, gen: torch.Generator) -> torch.Tensor:
    per = [n // len(mixtures) + (1 if i < n % len(mixtures) else 0) for i in range(len(mixtures))]
    return torch.cat([m.sample(k, gen) for m, k in zip(mixtures, per, strict=True)])


def run_toy(
    section: Literal["target", "evidence"],
    config: PerturbConfig | None = None,
    *,
    shift: tuple[float, float] = (1.8, 1.8),
    pretrain_steps: int = 1000,
    checkpoint: str | Path | None = None,
    n_target: int = 5000,
    evidence_size: int = 100,
    n_test: int = 2000,
    seed: int = 0,
    quiet: bool | None = None,
) -> ToyReport:
    """Pretrain (or load) a :class:`Generator` on :func:`four_gaussians`, perturb it, evaluate on fresh draws.

    Parameters
    ----------
    section
        ``"target"``: towards ``n_target`` stratified draws of the mixture shifted by ``shift``.
        ``"evidence"``: towards three domains of ``evidence_size`` points, shifted by ``shift`` plus
        :data:`EVIDENCE_OFFSETS`.
    config
        Perturbation settings (defaults if ``None``).
    pretrain_steps
        WGAN-GP generator steps (one-sided penalty, default settings of :func:`pretrain_wgan_gp`).
    checkpoint
        A checkpoint written by :func:`pretrain_wgan_gp` for a default ``Generator()``; skips pretraining.
    n_target, evidence_size, n_test, seed
        Sizes of the target sample, of each evidence domain and of the test draws; the seed of everything.
    quiet
        Hide progress bars (``None``: shown only on an interactive terminal).

    Returns
    -------
    ToyReport

    Examples
    --------
    >>> cfg = PerturbConfig(n_particles=64, n_validation=64, max_steps=1)
    >>> run_toy("target", cfg, pretrain_steps=2, n_target=200, n_test=64).run.steps_run
    1
    """
    if section not in ("target", "evidence"):
        raise ValueError(f"section must be 'target' or 'evidence'; got {section!r}")
    cfg = config if config is not None else PerturbConfig()
    base = four_gaussians()
    with torch.random.fork_rng():  # seeded initial weights, the global RNG left as it was
        torch.manual_seed(seed)
        template, critic = Generator(), Critic()
    latent_dim = template.latent_dim
    generator: nn.Module = template
    pretrain_seconds = 0.0
    if checkpoint is not None:
        state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "generator" not in state:
            raise ValueError(f"{checkpoint} is not a pretrain_wgan_gp checkpoint (no 'generator' entry)")
        generator.load_state_dict(state["generator"])
    else:
        pre = pretrain_wgan_gp(generator, critic, base, steps=pretrain_steps, seed=seed, quiet=quiet)
        generator, pretrain_seconds = pre.generator, pre.seconds
    gen = torch.Generator().manual_seed(seed + 101)
    if section == "target":
        targets = [base.shifted(shift)]
        run = TargetPerturber(generator, targets[0].sample(n_target, gen), cfg).run(quiet=quiet)
    else:
        offsets = [[shift[0] + dx, shift[1] + dy] for dx, dy in EVIDENCE_OFFSETS]
        targets = [base.shifted(o) for o in offsets]
        domains = evidence_domains(base, offsets, evidence_size, seed=seed + 202)
        run = EvidencePerturber(generator, domains, cfg).run(quiet=quiet)
    test_gen = torch.Generator().manual_seed(seed + 303)
    z = _sobol_latents(n_test, latent_dim, seed + 404)
    y_test, y_floor = _pooled(targets, n_test, test_gen), _pooled(targets, n_test, test_gen)
    with torch.no_grad():
        before, after = generator(z), run.generator(z)
    # modes of the (pooled) target: the base modes moved by the mean shift, widened by the domain spread
    mean_shift = torch.stack([t.centers.mean(0) - base.centers.mean(0) for t in targets]).mean(0)
    spread = max(float((t.centers.mean(0) - base.centers.mean(0) - mean_shift).norm()) for t in targets)
    centers, radius = base.shifted(mean_shift).centers, 3.0 * base.std + spread
    return ToyReport(
        section=section,
        test_w2_before=float(wasserstein2(before, y_test)),
        test_w2_after=float(wasserstein2(after, y_test)),
        test_w2_floor=float(wasserstein2(y_floor, y_test)),
        coverage_before=mode_coverage(before, base.centers, radius=3.0 * base.std),
        coverage_after=mode_coverage(after, centers, radius=radius),
        pretrain_seconds=pretrain_seconds,
        run=run,
    )
