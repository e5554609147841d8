"""``PerturbConfig``: every number the perturbers use, in one flat, validated, YAML-round-trip dataclass."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shiftlab.report import atomic_write_text

__all__ = ["PerturbConfig"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "plan": ("auto", "exact", "entropic"),
    "update": ("least-squares", "first-order"),
    "trust_region": ("relative", "per-layer", "none"),
    "capacity": ("none", "interpolation"),
    "latent_sampling": ("sobol", "normal"),
    "kde_schedule": ("constant", "linear", "cosine", "exponential"),
    "entropy": ("knn", "logdet", "none"),
}


@dataclass(frozen=True)
class PerturbConfig:
    r"""Settings of :class:`TargetPerturber` and :class:`EvidencePerturber`.

    Step machinery (both sections)
        ``n_particles`` latents are drawn per step and pushed through the generator; each particle gets a
        displacement ``v_i`` (Section 2: barycentric OT map minus identity; Section 3: the field described
        below), scaled by ``step_size`` and capped at ``speed_cap`` (data units; times the local
        capacity factor when ``capacity="interpolation"``). The weight update solves the damped least
        squares ``min (1/n)||J d - b||^2 + damping ||d||^2`` by ``cg_iters`` conjugate-gradient (CGLS)
        iterations with JVP/VJP products (``update="least-squares"``), or takes one exact line-search
        step along ``J^T b`` (``"first-order"``, the baseline). A trust region then limits
        ``||d||`` to ``trust_radius`` times ``||theta||`` (``"relative"``) or each layer's update to
        ``trust_radius`` times that layer's norm (``"per-layer"``). With ``enforce_cap`` the update is
        then shrunk until every step particle's *realised* move :math:`\lVert G_{\theta+\delta}(z_i) -
        G_\theta(z_i)\rVert` is within its cap (the linearised fit can overshoot on a few particles).
    Validation
        ``n_validation`` latents (scrambled Sobol mapped through the normal quantile function by default:
        quasi-random latents make the generator's mode proportions on the validation set far less noisy)
        are fixed at the start and never used for a step; ``holdout_fraction`` of the target (of each
        evidence domain) is held out of every step, the same fraction from each of ``holdout_strata``
        k-means clusters (a random holdout of a multi-modal sample has noisy mode proportions, which
        dominate exact W2; 1 = plain random split). Exact W2 between the two decides accept/reject:
        a step that raises it is undone and the step scale halves (it grows by 1.5 after an accepted
        step, up to 1).
    Stopping
        ``converged`` when validation W2 <= ``tol_w2``; ``stopped`` after ``max_steps``, after
        ``patience`` steps without a relative improvement of ``min_improvement`` of the best W2, or after
        ``max_rejections`` consecutive rejections; ``diverged`` when (``accept_reject=False``) W2 exceeds
        ``divergence_factor`` times its initial value.
    Section 3 field
        ``virtual_weight`` x (OT displacement to a sample of the annealed broadened KDE: initial
        broadening ``kde_factor``, schedule ``kde_schedule``, annealed over the first ``anneal_fraction``
        of ``max_steps``) + ``sinkhorn_weight`` x (multi-marginal debiased-Sinkhorn displacement,
        domains weighted equally, blur ``blur``) + ``entropy_weight`` x (entropy ascent: Kozachenko-
        Leonenko ``knn`` estimate with ``knn_k`` neighbours, or Gaussian ``logdet``).
    Entropic transport
        Used by the Sinkhorn term, and by the plans when ``plan="entropic"`` or (``"auto"``) when more
        than ``exact_max_n`` points meet: blur ``blur`` (data units), ``sinkhorn_iters`` iterations after
        the annealing (a fixed budget, rows exact; mass crossing between well-separated modes converges
        too slowly for a tolerance-driven stop to be affordable at every step).

    Defaults are tuned on the 2-D four-Gaussian toy (data spread about 4 units): ``speed_cap=0.5`` moves
    a particle at most an eighth of the mode spacing per step.

    Examples
    --------
    >>> PerturbConfig(max_steps=10).max_steps
    10
    >>> PerturbConfig(plan="fast")
    Traceback (most recent call last):
    ...
    ValueError: PerturbConfig.plan must be one of ('auto', 'exact', 'entropic'); got 'fast'
    """

    n_particles: int = 1000
    n_validation: int = 1000
    max_steps: int = 100
    step_size: float = 1.0
    speed_cap: float = 0.5
    capacity: Literal["none", "interpolation"] = "none"
    capacity_bandwidth: float | None = None
    plan: Literal["auto", "exact", "entropic"] = "auto"
    exact_max_n: int = 4096
    blur: float = 0.3
    sinkhorn_iters: int = 100
    enforce_cap: bool = True
    update: Literal["least-squares", "first-order"] = "least-squares"
    cg_iters: int = 10
    damping: float = 1e-3
    trust_region: Literal["relative", "per-layer", "none"] = "relative"
    trust_radius: float = 0.05
    accept_reject: bool = True
    tol_w2: float | None = None
    min_improvement: float = 1e-3
    patience: int = 20
    max_rejections: int = 6
    divergence_factor: float = 2.0
    latent_sampling: Literal["sobol", "normal"] = "sobol"
    holdout_fraction: float = 0.2
    holdout_strata: int = 16
    seed: int = 0
    kde_factor: float = 3.0
    kde_schedule: Literal["constant", "linear", "cosine", "exponential"] = "cosine"
    anneal_fraction: float = 0.5
    virtual_weight: float = 1.0
    sinkhorn_weight: float = 0.5
    entropy: Literal["knn", "logdet", "none"] = "knn"
    entropy_weight: float = 0.01
    knn_k: int = 5

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _CHOICES:
                if value not in _CHOICES[f.name]:
                    raise ValueError(
                        f"PerturbConfig.{f.name} must be one of {_CHOICES[f.name]}; got {value!r}"
                    )
            elif f.type == "bool":
                if not isinstance(value, bool):
                    raise TypeError(f"PerturbConfig.{f.name} must be a bool; got {value!r}")
            elif f.name in ("capacity_bandwidth", "tol_w2"):
                if value is not None:
                    self._positive(f.name, value)
            elif f.type == "int":
                low = 0 if f.name == "seed" else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    raise ValueError(f"PerturbConfig.{f.name} must be an int >= {low}; got {value!r}")
            elif f.name in ("virtual_weight", "sinkhorn_weight", "entropy_weight", "damping"):
                self._non_negative(f.name, value)
            else:
                self._positive(f.name, value)
        if not self.holdout_fraction < 1.0:
            raise ValueError(
                f"PerturbConfig.holdout_fraction must lie in (0, 1); got {self.holdout_fraction!r}"
            )
        for name in ("anneal_fraction", "step_size"):
            if getattr(self, name) > 1.0:
                raise ValueError(f"PerturbConfig.{name} must lie in (0, 1]; got {getattr(self, name)!r}")
        if self.kde_factor < 1.0:
            raise ValueError(f"PerturbConfig.kde_factor must be >= 1; got {self.kde_factor!r}")
        if self.divergence_factor <= 1.0:
            raise ValueError(f"PerturbConfig.divergence_factor must be > 1; got {self.divergence_factor!r}")
        if self.virtual_weight + self.sinkhorn_weight == 0:
            raise ValueError("PerturbConfig: virtual_weight and sinkhorn_weight cannot both be 0")

    @staticmethod
    def _positive(name: str, value: Any) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(f"PerturbConfig.{name} must be a positive finite number; got {value!r}")

    @staticmethod
    def _non_negative(name: str, value: Any) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"PerturbConfig.{name} must be a finite number >= 0; got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerturbConfig:
        """Build from a mapping; unknown keys raise a ``ValueError`` that lists the valid ones."""
        if not isinstance(data, dict):
            raise TypeError(f"a PerturbConfig mapping is needed; got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown PerturbConfig key(s) {unknown}; valid keys: {valid}")
        return cls(**data)

    def to_yaml(self, path: str | os.PathLike[str]) -> Path:
        """Write the config as YAML, atomically."""
        import yaml

        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> PerturbConfig:
        """Read a config written by :meth:`to_yaml` (or by hand); missing keys keep their defaults."""
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return cls.from_dict(data or {})
