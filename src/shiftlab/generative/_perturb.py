r"""``TargetPerturber`` (Section 2) and ``EvidencePerturber`` (Section 3): move a generator's weights.

Both run the same loop (:class:`~shiftlab.generative._engine.Engine`); they differ only in the particle
displacement field :math:`v` they ask for:

- Section 2, towards a target sample: :math:`v_i = T(x_i) - x_i` with :math:`T` the barycentric map of the
  exact OT plan from the particles to a batch of target points (beyond ``exact_max_n`` points: the
  debiased entropic displacement).
- Section 3, towards evidence domains :math:`E_1..E_K`:

  .. math::

      v_i = w_v\,(T_{\tilde\nu_t}(x_i) - x_i)
          + w_s\Bigl(\sum_k \omega_k T^\varepsilon_{\alpha E_k}(x_i) - T^\varepsilon_{\alpha\alpha}(x_i)\Bigr)
          + w_e\, n\nabla_{x_i}\hat H(x),

  the OT displacement to a sample of the annealed broadened KDE :math:`\tilde\nu_t` of the pooled
  evidence, the descent direction of the multi-marginal :math:`\sum_k \omega_k S_\varepsilon(\alpha, E_k)`
  (domain weights :math:`\omega_k`, equal by default;
  :func:`~shiftlab.functional.displacement.multi_sinkhorn_displacement`), and entropy ascent against collapse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from shiftlab.functional import ArrayLike, as_tensor
from shiftlab.functional.displacement import multi_sinkhorn_displacement
from shiftlab.generative._config import PerturbConfig
from shiftlab.generative._engine import Engine, FieldOutput, resolve_latent_dim
from shiftlab.generative._fields import entropy_ascent, ot_displacement, use_exact_plan
from shiftlab.generative._result import PerturbResult
from shiftlab.generative._samplers import BroadenedKDE, broadened_kde

__all__ = ["EvidencePerturber", "TargetPerturber"]


def _device(generator: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    first = next(generator.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _split(
    points: torch.Tensor, fraction: float, strata: int, seed: int, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(step part, held-out part) of ``points``, stratified by k-means clusters.

    A plain random holdout of a multi-modal sample carries multinomial mode proportions, and exact W2 is
    dominated by mode-mass imbalance: on the four-Gaussian toy, 600 randomly held-out points put a floor
    near 0.5 under any generator. Holding out the same fraction of every k-means cluster keeps the
    held-out proportions those of the sample. ``strata=1`` is a plain random split.
    """
    m = points.shape[0]
    held_total = round(fraction * m)
    if held_total < 1 or m - held_total < 1:
        raise ValueError(
            f"{name} has {m} point(s): too few to hold out holdout_fraction={fraction} for validation "
            "and keep the rest for the steps"
        )
    gen = torch.Generator().manual_seed(seed)
    k = max(1, min(strata, m // 10))
    if k == 1:
        labels = torch.zeros(m, dtype=torch.long)
    else:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(points.double().cpu().numpy())
        labels = torch.from_numpy(km.labels_).long()
    held_idx, step_idx = [], []
    for c in range(k):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        cut = round(fraction * len(members))
        held_idx.append(members[:cut])
        step_idx.append(members[cut:])
    held, steps = torch.cat(held_idx), torch.cat(step_idx)
    if len(held) == 0 or len(steps) == 0:
        raise ValueError(f"{name}: the stratified holdout left one side empty; lower holdout_strata")
    return points[steps], points[held]


def _points(x: ArrayLike, name: str) -> torch.Tensor:
    t = as_tensor(x, name=name, min_rows=2)
    if t.ndim < 2:
        raise ValueError(f"{name} must have shape (m, ...) with one point per row; got {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1).float()


class TargetPerturber:
    """Section 2: move a generator towards a target sample by pulled-back, capped OT particle steps.

    Parameters
    ----------
    generator
        Any ``nn.Module`` mapping ``(n, latent_dim)`` standard-normal latents to samples; it is copied,
        never modified. The copy runs, and is returned, in ``eval()`` mode (dropout off, normalisation
        statistics frozen); only parameters with ``requires_grad`` are perturbed.
    target
        ``(m, ...)`` target sample (rows are points; flattened). ``config.holdout_fraction`` of it is held
        out for validation, the rest feeds the steps.
    config
        :class:`PerturbConfig` (defaults if ``None``).
    latent_dim
        Needed when the generator has no ``latent_dim`` attribute.
    device
        Where to run (default: the generator's device).

    Examples
    --------
    >>> from shiftlab.generative import Generator, four_gaussians
    >>> gen = Generator(hidden=(32,))
    >>> target = four_gaussians().sample(200, torch.Generator().manual_seed(0))
    >>> cfg = PerturbConfig(n_particles=64, n_validation=64, max_steps=2)
    >>> res = TargetPerturber(gen, target, cfg).run()
    >>> res.steps_run, res.status
    (2, 'stopped')
    """

    def __init__(
        self,
        generator: nn.Module,
        target: ArrayLike,
        config: PerturbConfig | None = None,
        *,
        latent_dim: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config if config is not None else PerturbConfig()
        if not isinstance(self.config, PerturbConfig):
            raise TypeError(f"config must be a PerturbConfig; got {type(self.config).__name__}")
        dev = _device(generator, device)
        points = _points(target, "target")
        cfg = self.config
        steps_part, held = _split(points, cfg.holdout_fraction, cfg.holdout_strata, cfg.seed + 1, "target")
        self.target_steps = steps_part.to(dev)
        self.engine = Engine(
            generator,
            self.config,
            latent_dim=resolve_latent_dim(generator, latent_dim),
            device=dev,
            validation_target=held,
            section="target",
        )

    def _field(self, x: torch.Tensor, step: int, gen: torch.Generator) -> FieldOutput:
        cfg = self.config
        y = self.target_steps
        if y.shape[0] > cfg.n_particles:
            y = y[torch.randperm(y.shape[0], generator=gen)[: cfg.n_particles].to(y.device)]
        exact = use_exact_plan(cfg.plan, x.shape[0], y.shape[0], cfg.exact_max_n)
        v = ot_displacement(x, y.to(x.dtype), exact=exact, blur=cfg.blur, sinkhorn_iters=cfg.sinkhorn_iters)
        return FieldOutput(v, y)

    def run(self, *, quiet: bool | None = None) -> PerturbResult:
        """Run up to ``config.max_steps`` steps; errors (non-finite outputs, solver failures) propagate.

        ``quiet``: hide the progress bar (``None``: shown only on an interactive terminal).
        """
        return self.engine.run(self._field, quiet=quiet)


class EvidencePerturber:
    r"""Section 3: move a generator towards a virtual target estimated from a few evidence domains.

    Parameters
    ----------
    generator
        As in :class:`TargetPerturber`.
    evidence_domains
        Sequence of ``(m_k, ...)`` samples, one per domain (at least 4 points each, so that each keeps a
        held-out part). ``config.holdout_fraction`` of every domain is held out; the pooled held-out points
        are the validation target.
    config, latent_dim, device
        As in :class:`TargetPerturber`.
    domain_weights
        Weights :math:`\omega_k` of the multi-marginal term :math:`\sum_k \omega_k S_\varepsilon(\alpha, E_k)`
        (non-negative, summing to 1; ``None``: equal).

    Examples
    --------
    >>> from shiftlab.generative import Generator, evidence_domains, four_gaussians
    >>> doms = evidence_domains(four_gaussians(), [[1.8, 1.8], [1.6, 2.0]], 40)
    >>> cfg = PerturbConfig(n_particles=64, n_validation=64, max_steps=2, blur=0.3)
    >>> EvidencePerturber(Generator(hidden=(32,)), doms, cfg).run().steps_run
    2
    """

    def __init__(
        self,
        generator: nn.Module,
        evidence_domains: Sequence[ArrayLike],
        config: PerturbConfig | None = None,
        *,
        latent_dim: int | None = None,
        device: str | torch.device | None = None,
        domain_weights: Sequence[float] | None = None,
    ) -> None:
        self.config = config if config is not None else PerturbConfig()
        if not isinstance(self.config, PerturbConfig):
            raise TypeError(f"config must be a PerturbConfig; got {type(self.config).__name__}")
        if isinstance(evidence_domains, torch.Tensor) or not isinstance(evidence_domains, Sequence):
            raise TypeError("evidence_domains must be a sequence of (m_k, ...) samples, one per domain")
        if len(evidence_domains) < 1:
            raise ValueError("evidence_domains needs at least one domain")
        dev = _device(generator, device)
        cfg = self.config
        steps_parts, held_parts = [], []
        for k, dom in enumerate(evidence_domains):
            s, h = _split(
                _points(dom, f"evidence_domains[{k}]"),
                cfg.holdout_fraction,
                cfg.holdout_strata,
                cfg.seed + 1 + k,
                f"evidence_domains[{k}]",
            )
            steps_parts.append(s)
            held_parts.append(h)
        if len({p.shape[1] for p in steps_parts}) != 1:
            raise ValueError("every evidence domain must have the same point dimension")
        self.domains = [p.to(dev) for p in steps_parts]
        if domain_weights is None:
            self.domain_weights = [1.0 / len(steps_parts)] * len(steps_parts)
        else:
            self.domain_weights = [float(w) for w in domain_weights]
            bad = len(self.domain_weights) != len(steps_parts) or any(w < 0 for w in self.domain_weights)
            if bad or abs(sum(self.domain_weights) - 1.0) > 1e-6:
                raise ValueError(
                    f"domain_weights must be {len(steps_parts)} non-negative numbers summing to 1; "
                    f"got {domain_weights!r}"
                )
        self.kde: BroadenedKDE = broadened_kde(steps_parts, self.config.kde_factor, self.config.kde_schedule)
        if self.config.entropy == "knn" and self.config.knn_k >= self.config.n_particles:
            raise ValueError(f"knn_k={self.config.knn_k} must be below n_particles={self.config.n_particles}")
        self.engine = Engine(
            generator,
            self.config,
            latent_dim=resolve_latent_dim(generator, latent_dim),
            device=dev,
            validation_target=torch.cat(held_parts),
            section="evidence",
        )

    def progress(self, step: int) -> float:
        """Annealing progress :math:`p \\in [0, 1]` of the broadened KDE at ``step``."""
        horizon = max(1.0, self.config.anneal_fraction * self.config.max_steps)
        return min(1.0, step / horizon)

    def _field(self, x: torch.Tensor, step: int, gen: torch.Generator) -> FieldOutput:
        cfg = self.config
        virtual = self.kde.sample(cfg.n_particles, self.progress(step), gen).to(
            device=x.device, dtype=x.dtype
        )
        v = torch.zeros_like(x)
        if cfg.virtual_weight > 0:
            exact = use_exact_plan(cfg.plan, x.shape[0], virtual.shape[0], cfg.exact_max_n)
            v = v + cfg.virtual_weight * ot_displacement(
                x, virtual, exact=exact, blur=cfg.blur, sinkhorn_iters=cfg.sinkhorn_iters
            )
        if cfg.sinkhorn_weight > 0:
            domains = [d.to(x.dtype) for d in self.domains]
            pull = multi_sinkhorn_displacement(
                x,
                domains,
                weights=self.domain_weights,
                blur=cfg.blur,
                strict=False,
                max_iter=cfg.sinkhorn_iters,
            )
            v = v + cfg.sinkhorn_weight * pull.to(x.dtype)
        if cfg.entropy != "none" and cfg.entropy_weight > 0:
            v = v + cfg.entropy_weight * entropy_ascent(x, cfg.entropy, cfg.knn_k)
        return FieldOutput(v, virtual)

    def run(self, *, quiet: bool | None = None) -> PerturbResult:
        """Run up to ``config.max_steps`` steps; errors (non-finite outputs, solver failures) propagate.

        ``quiet``: hide the progress bar (``None``: shown only on an interactive terminal).
        """
        return self.engine.run(self._field, quiet=quiet)
