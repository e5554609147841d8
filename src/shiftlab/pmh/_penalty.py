r"""``PMHPenalty``: the Jacobian energy of a model along Σ, as a differentiable training penalty.

.. math:: P(\theta) = \frac{1}{B} \sum_{b=1}^{B} \operatorname{tr}\!\big(J_b \Sigma' J_b^\top\big),
          \qquad J_b = \partial h(x_b) / \partial s(x_b),

with :math:`s` the perturbation site (the input or a named layer), :math:`h` the measured representation
(the output or a named layer above the site, flattened) and Σ' = F Fᵀ + σ² I the covariance of the arm
(matched, isotropic, wrong or signal; see :func:`control_estimate`). Three estimators:

* ``"jvp"``: exact :math:`\sum_i \lVert J f_i \rVert^2` over the r factor columns by forward-mode AD; the
  floor term :math:`\sigma^2 \lVert J \rVert_F^2` by ``n_probes`` Gaussian probes (unbiased);
* ``"hutchinson"``: ``n_probes`` probes :math:`v \sim \mathcal{N}(0, \Sigma')` per sample,
  :math:`\mathbb{E}\lVert J v \rVert^2 = \operatorname{tr}(J \Sigma' J^\top)`, one JVP each;
* ``"fd"``: the same probes through forward finite differences with step ``fd_step`` (cheapest; biased by
  :math:`O(\varepsilon)` curvature terms).

The perturbation is applied by adding a tensor at the site (a forward hook for a layer), so the gradient of
the penalty reaches every parameter below and above the site. With BatchNorm in training mode the tangent
also flows through the batch statistics (the Jacobian then couples samples); use eval-mode BatchNorm or
GroupNorm where that matters.

Forward-mode AD has wrong derivatives for some ops in torch (pytorch/pytorch#196700, #198017): the JVP's
*value* is right, but its gradient with respect to the weights is not for ``layer_norm`` and training-mode
``batch_norm`` (gradcheck fails with errors around 100 %). Training through ``"jvp"`` or ``"hutchinson"``
on a model holding ``nn.LayerNorm`` or a training-mode BatchNorm therefore raises; ``"fd"`` differentiates
with reverse mode only and is correct there (GroupNorm, RMSNorm, InstanceNorm and eval-mode BatchNorm pass
the check). A hand-written layer norm from elementary ops is also differentiated correctly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import nn

from shiftlab.functional.jacobian import fd_energy, jvp_energy
from shiftlab.pmh._controls import MODES, control_estimate
from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._layers import INPUT, OUTPUT, capture, check_site_names, replace_output

Estimator = Literal["jvp", "hutchinson", "fd"]
ESTIMATORS: tuple[str, ...] = ("jvp", "hutchinson", "fd")


def _forward_ad_unsafe(model: nn.Module) -> list[str]:
    """Names of submodules whose JVP has a wrong weight gradient in torch (see the module notes)."""
    return [
        name or type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, nn.LayerNorm) or (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training)
    ]


def _updates_buffers(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
        for m in model.modules()
    )


class PenaltyOutput(NamedTuple):
    """``value``: the scalar penalty; ``output``: the model's unperturbed output on the (sub-)batch."""

    value: torch.Tensor
    output: torch.Tensor


class PMHPenalty(nn.Module):
    r"""Penalty :math:`\mathbb{E}_x \operatorname{tr}(J \Sigma' J^\top)` at the estimate's site.

    Parameters
    ----------
    estimate
        The matched :class:`NuisanceEstimate`; its ``site`` says where to perturb.
    measure
        ``"output"`` or the name of a layer above the site whose output is measured.
    mode
        ``"matched"``, ``"isotropic"``, ``"wrong"`` or ``"signal"`` (see :func:`control_estimate`).
    estimator
        ``"jvp"``, ``"hutchinson"`` or ``"fd"``.
    n_probes
        Random probes per sample (Hutchinson / fd, and the floor term of ``jvp``).
    fd_step
        Finite-difference step ε, in the site's units, applied to probes of unit expected norm.
    seed
        Seeds the probe generator and the ``wrong`` control's subspace.
    vectorize
        Evaluate all probe/direction blocks in one ``torch.func.vmap`` call (``True``) or loop over them
        (``False``). ``"auto"`` loops only when the model holds a module that updates buffers in place in
        training mode (BatchNorm with running statistics), which ``torch.func`` cannot transform.

    Examples
    --------
    >>> f = torch.zeros(4, 1); f[0, 0] = 1.0
    >>> est = NuisanceEstimate(f, 0.0, torch.tensor([1.0, 0.0]), "input", (4,), "demo", {})
    >>> net = nn.Linear(4, 2)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[3.0, 0, 0, 0], [4.0, 0, 0, 1.0]]))
    >>> penalty = PMHPenalty(est)
    >>> penalty(net, torch.randn(8, 4)).value.detach()  # ‖J f‖² = 3² + 4²
    tensor(25.)
    """

    def __init__(
        self,
        estimate: NuisanceEstimate,
        *,
        measure: str = OUTPUT,
        mode: str = "matched",
        estimator: str = "jvp",
        n_probes: int = 1,
        fd_step: float = 1e-2,
        seed: int = 0,
        vectorize: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(estimate, NuisanceEstimate):
            raise TypeError(f"estimate must be a NuisanceEstimate; got {type(estimate).__name__}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
            raise ValueError(f"n_probes must be an int >= 1; got {n_probes!r}")
        if not (math.isfinite(fd_step) and fd_step > 0):
            raise ValueError(f"fd_step must be a finite float > 0; got {fd_step}")
        arm = control_estimate(estimate, mode, seed=seed)
        self.site = estimate.site
        self.shape = estimate.shape
        self.measure = measure
        self.mode = mode
        self.estimator = estimator
        self.n_probes = n_probes
        self.fd_step = fd_step
        self.floor = arm.floor
        self.trace = arm.trace
        self.register_buffer("factor", arm.factor.detach().clone())
        self._seed = seed
        if vectorize not in (True, False, "auto"):
            raise ValueError(f"vectorize must be True, False or 'auto'; got {vectorize!r}")
        self.vectorize = vectorize
        self._generator: torch.Generator | None = None

    def _probe_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self._seed)
        return self._generator

    def _tangents(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tangent blocks ``(m, B, d)`` and weights ``(m,)`` whose weighted outer products average to Σ'."""
        buffer = self.factor
        assert isinstance(buffer, torch.Tensor)
        factor = buffer.to(like.dtype)
        d, r = factor.shape
        gen = self._probe_generator(like.device)
        blocks: list[torch.Tensor] = []
        weights: list[float] = []
        if self.estimator == "jvp":
            blocks.extend(factor.T.unsqueeze(1).expand(r, batch, d))
            weights.extend([1.0] * r)
            if self.floor > 0:
                w = torch.randn(self.n_probes, batch, d, generator=gen, device=like.device, dtype=like.dtype)
                blocks.extend(w * math.sqrt(self.floor))
                weights.extend([1.0 / self.n_probes] * self.n_probes)
        else:
            p = self.n_probes
            z = torch.randn(p, batch, r, generator=gen, device=like.device, dtype=like.dtype)
            v = z @ factor.T
            if self.floor > 0:
                v = v + math.sqrt(self.floor) * torch.randn(
                    p, batch, d, generator=gen, device=like.device, dtype=like.dtype
                )
            blocks.extend(v)
            weights.extend([1.0 / p] * p)
        tangents = torch.stack(blocks)
        return tangents, torch.tensor(weights, dtype=like.dtype, device=like.device)

    def _forward_fn(
        self, model: nn.Module, x: torch.Tensor
    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``delta -> (measured representation, model output)`` with ``delta`` added at the site."""

        def run(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with capture(model, self.measure) as store:
                if self.site == INPUT:
                    out = model(x + delta.reshape(x.shape))
                else:
                    with replace_output(model, self.site, lambda value: value + delta.reshape(value.shape)):
                        out = model(x)
            measured = out if self.measure == OUTPUT else store["value"]
            return measured.reshape(measured.shape[0], -1), out

        return run

    def forward(self, model: nn.Module, x: torch.Tensor, *, fraction: float = 1.0) -> PenaltyOutput:
        """Penalty on batch ``x`` and the model's unperturbed output on all of ``x`` (for the task loss).

        With ``fraction < 1`` the penalty uses the first ``ceil(fraction * B)`` rows (an unbiased estimate
        when batches are shuffled); ``fd`` then reuses those rows of the full forward pass as its
        unperturbed point, so only the perturbed sub-batch costs extra.
        """
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
            raise ValueError("x must be a non-empty batch tensor of shape (B, ...)")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor; got {x.dtype}")
        if not (isinstance(fraction, int | float) and 0 < fraction <= 1):
            raise ValueError(f"fraction must lie in (0, 1]; got {fraction!r}")
        check_site_names(model, self.site, self.measure)
        if self.estimator != "fd" and torch.is_grad_enabled():
            unsafe = _forward_ad_unsafe(model)
            if unsafe:
                raise ValueError(
                    f"estimator={self.estimator!r} would train on wrong gradients: torch's forward-mode "
                    "derivative of layer_norm and training-mode batch_norm is wrong "
                    f"(pytorch/pytorch#196700, #198017), and the model holds {', '.join(unsafe[:3])}; "
                    "use estimator='fd', eval-mode BatchNorm, or take the value alone under torch.no_grad()"
                )
        if self.site == INPUT and tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"the estimate lives on inputs of shape {self.shape}; got a batch of {tuple(x.shape[1:])}"
            )
        k = max(1, math.ceil(fraction * x.shape[0]))
        sub = x[:k]
        tangents, weights = self._tangents(k, x)
        if self.site == INPUT:
            tangents = tangents.reshape(tangents.shape[0], *sub.shape)
        vectorize = self.vectorize if isinstance(self.vectorize, bool) else not _updates_buffers(model)
        run = self._forward_fn(model, sub)
        if k == x.shape[0]:
            if self.estimator == "fd":
                result = fd_energy(run, tangents, weights, self.fd_step, vectorize=vectorize)
            else:
                result = jvp_energy(run, tangents, weights, vectorize=vectorize)
            return PenaltyOutput(result.energy.mean(), result.output)
        full_measured, output = self._forward_fn(model, x)(
            torch.zeros_like(tangents[0, :1]).expand(x.shape[0], *tangents.shape[2:])
        )
        if self.estimator == "fd":
            unperturbed = (full_measured[:k], output[:k])
            energy = fd_energy(
                run, tangents, weights, self.fd_step, vectorize=vectorize, unperturbed=unperturbed
            ).energy
        else:
            energy = jvp_energy(run, tangents, weights, vectorize=vectorize).energy
        return PenaltyOutput(energy.mean(), output)
