r"""``ship_verdict``: SHIP / DO NOT SHIP / INCONCLUSIVE from paired, resampled deploy comparisons.

Inputs are per-example deploy scores for every arm and seed (1/0 correctness on the deploy holdout, or any
per-example metric where higher is better) and source-validation accuracy per seed. For arms A and B the
paired difference matrix :math:`D_{ki} = s^A_{ki} - s^B_{ki}` (seed k, example i) gets a crossed-bootstrap
interval (seeds and examples both resampled; :func:`~shiftlab.functional.crossed.crossed_bootstrap_ci`).

Rules, with :math:`[\ell, u]` the 1-α interval of matched - arm and δ the declared margin:

* **SHIP** only when (a) matched - baseline has ℓ > δ, (b) matched - isotropic and matched - wrong have
  ℓ > 0, and (c) the mean source-validation drop baseline - matched is below the tolerance, with every
  required arm present and at least ``min_seeds`` seeds;
* **DO NOT SHIP** when the evidence is against: u ≤ δ for matched - baseline (not better by the margin),
  a control beats matched (u < 0), or the source drop reaches the tolerance;
* **INCONCLUSIVE** otherwise (intervals straddle), and always when arms or seeds are missing.

Equal arms give D = 0, an interval [0, 0] and so never SHIP.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from shiftlab.functional.crossed import crossed_bootstrap_ci
from shiftlab.report import Report, Table

SHIP = "SHIP"
DO_NOT_SHIP = "DO NOT SHIP"
INCONCLUSIVE = "INCONCLUSIVE"
#: Process exit codes of ``shiftlab try --gate`` (1 is reserved for errors).
EXIT_CODES: Mapping[str, int] = {SHIP: 0, DO_NOT_SHIP: 3, INCONCLUSIVE: 4}
CONTROLS: tuple[str, ...] = ("isotropic", "wrong")
#: Reference arms a user could run instead, and what to tell them when one beats matched PMH.
ALTERNATIVES: Mapping[str, str] = {
    "target_rows": "train on your labelled target rows instead",
    "augmentation": "train with plain augmentation by the same transforms instead",
    "coral": "use feature-level CORAL instead",
}


@dataclasses.dataclass(frozen=True)
class VerdictConfig:
    """Declared decision parameters.

    Attributes
    ----------
    margin
        δ: the smallest deploy improvement over baseline worth shipping (accuracy units; 0.01 = one point).
    source_tolerance
        Largest acceptable mean drop of source-validation accuracy (0.02 = two points).
    alpha
        One minus the confidence level of every interval.
    n_boot
        Bootstrap resamples.
    min_seeds
        Fewer training seeds than this can never yield SHIP (seed variance would be unmeasured).
    seed
        Seeds the bootstrap.
    """

    margin: float = 0.01
    source_tolerance: float = 0.02
    alpha: float = 0.05
    n_boot: int = 2000
    min_seeds: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0; got {self.margin}")
        if not (math.isfinite(self.source_tolerance) and self.source_tolerance > 0):
            raise ValueError(f"source_tolerance must be > 0; got {self.source_tolerance}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1); got {self.alpha}")
        if self.min_seeds < 1 or self.n_boot < 100:
            raise ValueError("min_seeds must be >= 1 and n_boot >= 100")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Mean paired deploy difference ``arm - other`` with its crossed-bootstrap interval."""

    arm: str
    other: str
    difference: float
    ci_low: float
    ci_high: float


@dataclasses.dataclass(frozen=True)
class ShipVerdict(Report):
    """The gate's decision, the reasons with their numbers, and what to do instead if something beats it."""

    kind: ClassVar[str] = "ship_verdict"

    verdict: str
    reasons: tuple[str, ...]
    comparisons: tuple[Comparison, ...]
    deploy_means: Mapping[str, float]
    source_drop: float | None
    recommendation: str | None
    n_seeds: int
    n_examples: int
    config: VerdictConfig

    @property
    def exit_code(self) -> int:
        """The documented process exit code for ``--gate``."""
        return EXIT_CODES[self.verdict]

    def headline(self) -> str:
        return f"{self.verdict}: " + (self.reasons[0] if self.reasons else "")

    def tables(self) -> Sequence[Table]:
        rows = tuple(
            (f"{c.arm} - {c.other}", c.difference, f"[{c.ci_low:.4f}, {c.ci_high:.4f}]")
            for c in self.comparisons
        )
        reasons = tuple((r,) for r in self.reasons)
        return (
            Table(
                f"Deploy differences ({1 - self.config.alpha:.0%} crossed bootstrap)",
                ("pair", "mean", "CI"),
                rows,
            ),
            Table("Reasons", ("reason",), reasons),
        )


#: Metrics on a 0-1 accuracy scale, reported in points (×100); any other metric in its own units.
POINT_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy")


@dataclasses.dataclass(frozen=True)
class _Units:
    metric: str

    def value(self, v: float) -> str:
        if self.metric in POINT_METRICS:
            return f"{v * 100:.2f} points"
        return f"{v:.4f} ({self.metric})"

    def diff(self, c: Comparison, sign: int = 1) -> str:
        """'d (CI lo to hi)' for ``sign * (arm - other)``."""
        scale = 100 if self.metric in POINT_METRICS else 1
        lo, hi = sorted((sign * c.ci_low * scale, sign * c.ci_high * scale))
        digits = 2 if scale == 100 else 4
        return f"{self.value(sign * c.difference)} (CI {lo:.{digits}f} to {hi:.{digits}f})"


def _scores(deploy: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    shape: tuple[int, ...] | None = None
    for arm, value in deploy.items():
        t = torch.as_tensor(value).to(torch.float64)
        if t.ndim != 2:
            raise ValueError(f"deploy[{arm!r}] must be (seeds, examples); got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"deploy[{arm!r}] contains non-finite scores")
        if shape is not None and tuple(t.shape) != shape:
            raise ValueError(
                f"every arm needs the same (seeds, examples) shape; {arm!r} has {tuple(t.shape)}"
            )
        shape = tuple(t.shape)
        out[arm] = t
    return out


def ship_verdict(
    deploy: Mapping[str, Any],
    source_val: Mapping[str, Any] | None = None,
    config: VerdictConfig = VerdictConfig(),
    metric: str = "accuracy",
) -> ShipVerdict:
    """Decide SHIP / DO NOT SHIP / INCONCLUSIVE for the matched arm.

    Parameters
    ----------
    deploy
        Arm name -> (K seeds, n examples) per-example deploy scores (higher is better). Needs ``"matched"``
        and ``"baseline"``; ``"isotropic"`` and ``"wrong"`` are required for SHIP; reference arms
        (``"target_rows"``, ``"augmentation"``, ``"coral"``) feed the recommendation.
    source_val
        Arm name -> (K,) source-validation accuracy per seed (required for SHIP).
    config
        Margin, tolerance, α, resamples, minimum seeds. The margin is in the deploy metric's units.
    metric
        Name of the deploy metric, for the reasons: ``accuracy`` and ``balanced_accuracy`` are written
        in points (×100), any other metric in its own units.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> base = (torch.rand(3, 400, generator=g) < 0.6).float()
    >>> better = torch.maximum(base, (torch.rand(3, 400, generator=g) < 0.5).float())
    >>> deploy = {"baseline": base, "matched": better, "isotropic": base, "wrong": base}
    >>> sv = {arm: torch.full((3,), 0.95) for arm in deploy}
    >>> ship_verdict(deploy, sv).verdict
    'SHIP'
    >>> ship_verdict({**deploy, "matched": base}, sv).verdict
    'DO NOT SHIP'
    """
    scores = _scores(deploy)
    for required in ("matched", "baseline"):
        if required not in scores:
            raise ValueError(f"deploy scores need a {required!r} arm; got {', '.join(scores) or 'none'}")
    k, n = scores["matched"].shape
    comparisons: list[Comparison] = []

    def compare(other: str) -> Comparison:
        res = crossed_bootstrap_ci(
            scores["matched"] - scores[other], n_boot=config.n_boot, alpha=config.alpha, seed=config.seed
        )
        c = Comparison("matched", other, float(res.estimate), float(res.ci_low), float(res.ci_high))
        comparisons.append(c)
        return c

    against: list[str] = []
    missing: list[str] = []
    passed: list[str] = []
    units = _Units(metric)
    _points = units.diff
    margin = f"the margin of {units.value(config.margin)}"
    base = compare("baseline")
    if base.ci_low > config.margin:
        passed.append(f"matched beats baseline by {_points(base)}, above {margin}")
    elif base.ci_high <= config.margin:
        against.append(f"matched is not better than baseline by {margin}: {_points(base)}")
    else:
        missing.append(f"matched - baseline straddles {margin}: {_points(base)}")
    for control in CONTROLS:
        if control not in scores:
            missing.append(f"the {control} control arm is missing, so direction-specificity is untested")
            continue
        c = compare(control)
        if c.ci_low > 0:
            passed.append(f"matched beats the {control} control by {_points(c)}")
        elif c.ci_high < 0:
            against.append(f"the {control} control beats matched: {_points(c)}")
        else:
            missing.append(f"matched is not distinguishable from the {control} control: {_points(c)}")
    source_drop: float | None = None
    if source_val is None or "matched" not in source_val or "baseline" not in source_val:
        missing.append("source-validation accuracy for matched and baseline was not given")
    else:
        drop = torch.as_tensor(source_val["baseline"], dtype=torch.float64) - torch.as_tensor(
            source_val["matched"], dtype=torch.float64
        )
        source_drop = float(drop.mean())
        tolerance = config.source_tolerance * 100
        text = f"source validation drops by {source_drop * 100:.2f} points (tolerance {tolerance:.2f})"
        (passed if source_drop < config.source_tolerance else against).append(text)
    if k < config.min_seeds:
        missing.append(f"only {k} seed(s); SHIP needs at least {config.min_seeds}")

    if against:
        verdict, reasons = DO_NOT_SHIP, against + missing + passed
    elif missing:
        verdict, reasons = INCONCLUSIVE, missing + passed
    else:
        verdict, reasons = SHIP, passed

    means = {arm: float(s.mean()) for arm, s in scores.items()}
    recommendation = None
    for arm, advice in ALTERNATIVES.items():
        if arm in scores:
            c = compare(arm)
            if c.ci_high < 0:
                recommendation = f"{advice}: {arm} minus matched PMH is {_points(c, sign=-1)}"
                break
            if c.difference <= 0 and recommendation is None:
                recommendation = (
                    f"{arm} does about as well as matched PMH: {arm} minus matched is {_points(c, sign=-1)}"
                )
    return ShipVerdict(
        verdict=verdict,
        reasons=tuple(reasons),
        comparisons=tuple(comparisons),
        deploy_means=means,
        source_drop=source_drop,
        recommendation=recommendation,
        n_seeds=k,
        n_examples=n,
        config=config,
    )
