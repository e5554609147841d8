r"""Pull a particle step back to the weights: matrix-free least squares (CGLS with JVP/VJP) and trust regions.

For latents :math:`z_1..z_n` and the flattened generator outputs :math:`x_i = G_\theta(z_i) \in \mathbb R^D`,
let :math:`J = \partial (x_1, \dots, x_n) / \partial\theta` (an :math:`nD \times P` matrix never formed).
Given requested particle steps :math:`b_i`, the least-squares pullback is

.. math::

    \delta^\star = \operatorname*{arg\,min}_\delta\
    \frac1n\lVert J\delta - b\rVert^2 + \rho\lVert\delta\rVert^2,

solved by CGLS (conjugate gradients on the normal equations without forming :math:`J^\top J`): each
iteration costs one Jacobian-vector product (``torch.func.jvp``) and one vector-Jacobian product (a
reused ``torch.func.vjp``). The first-order baseline is the exact line-search step along
:math:`J^\top b` (one CGLS iteration, the Cauchy point).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

__all__ = ["PullbackStep", "layer_norms", "least_squares_step", "trust_region"]

Params = dict[str, torch.Tensor]


class PullbackStep(NamedTuple):
    """A weight update and how well it reproduces the requested particle step.

    Attributes
    ----------
    delta : dict of str to torch.Tensor
        The update, keyed like ``generator.named_parameters()``.
    residual : float
        :math:`\\lVert J\\delta - b\\rVert / \\lVert b\\rVert` (linearised), before any trust region.
    iterations : int
        CGLS iterations run.
    """

    delta: Params
    residual: float
    iterations: int


def _dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


def _axpy(alpha: torch.Tensor | float, x: Params, y: Params) -> Params:
    return {k: y[k] + alpha * x[k] for k in y}


def output_fn(generator: nn.Module, z: torch.Tensor) -> Callable[[Params], torch.Tensor]:
    """``params -> G_params(z)`` flattened to ``(n, D)`` (the module's buffers are used as they are)."""

    def f(params: Params) -> torch.Tensor:
        out = functional_call(generator, params, (z,))
        return out.reshape(out.shape[0], -1)

    return f


def least_squares_step(
    generator: nn.Module,
    params: Params,
    z: torch.Tensor,
    target_step: torch.Tensor,
    *,
    iterations: int,
    damping: float,
    first_order: bool = False,
) -> PullbackStep:
    r"""Solve :math:`\min_\delta \frac1n\lVert J\delta - b\rVert^2 + \rho\lVert\delta\rVert^2` by CGLS.

    Parameters
    ----------
    generator
        The module whose parameters are replaced by ``params`` (through ``torch.func.functional_call``).
    params
        Current parameters (detached tensors), keyed by name.
    z
        ``(n, k)`` latents.
    target_step
        ``(n, D)`` requested particle displacements :math:`b`.
    iterations
        Maximum CGLS iterations (ignored with ``first_order=True``); fewer are run once the
        normal-equation residual :math:`\lVert J^\top(b - J\delta)/n - \rho\delta\rVert` has fallen to
        100 machine epsilons of its initial value.
    damping
        :math:`\rho \ge 0`.
    first_order
        Return the Cauchy step along :math:`J^\top b` instead.

    Returns
    -------
    PullbackStep

    Examples
    --------
    >>> lin = nn.Linear(2, 2)
    >>> params = {k: v.detach() for k, v in lin.named_parameters()}
    >>> z = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    >>> step = least_squares_step(lin, params, z, torch.ones(50, 2), iterations=6, damping=0.0)
    >>> step.residual < 1e-4
    True
    """
    n = z.shape[0]
    scale = float(n) ** -0.5
    f = output_fn(generator, z)
    b = target_step.reshape(n, -1) * scale
    b_norm = float(b.norm())
    zeros = {k: torch.zeros_like(v) for k, v in params.items()}
    if b_norm == 0.0:
        return PullbackStep(zeros, 0.0, 0)
    _, vjp_fn = vjp(lambda p: f(p) * scale, params)[:2]

    def jmul(t: Params) -> torch.Tensor:
        return jvp(lambda p: f(p) * scale, (params,), (t,))[1]

    def jtmul(r: torch.Tensor) -> Params:
        return dict(vjp_fn(r)[0])

    x = zeros
    r = b.clone()
    s = jtmul(r)
    p = {k: v.clone() for k, v in s.items()}
    gamma = _dot(s, s)
    # stop once the normal-equation residual is at round-off level: iterating further divides noise by
    # noise (beta = gamma_new / gamma) and CG drifts away from the solution it had already reached
    stop = float(gamma) * (100.0 * torch.finfo(b.dtype).eps) ** 2
    n_iter = 1 if first_order else iterations
    done = 0
    for _ in range(n_iter):
        if float(gamma) <= stop:
            break
        q = jmul(p)
        alpha = gamma / ((q * q).sum() + damping * _dot(p, p))
        x = _axpy(alpha, p, x)
        r = r - alpha * q
        done += 1
        if done == n_iter:
            break
        s = _axpy(-damping, x, jtmul(r))
        gamma_new = _dot(s, s)
        p = _axpy(gamma_new / gamma, p, s)
        gamma = gamma_new
    residual = float(r.norm()) / b_norm
    return PullbackStep(x, residual, done)


def layer_norms(tensors: Params) -> dict[str, float]:
    """Euclidean norm per layer: parameters are grouped by module (the name without its last component)."""
    sq: dict[str, float] = {}
    for name, t in tensors.items():
        layer = name.rsplit(".", 1)[0] if "." in name else name
        sq[layer] = sq.get(layer, 0.0) + float((t.detach().double() ** 2).sum())
    return {k: v**0.5 for k, v in sq.items()}


def trust_region(delta: Params, params: Params, mode: str, radius: float) -> tuple[Params, float]:
    r"""Shrink an update to the trust region.

    ``"relative"``: scale the whole update so that :math:`\lVert\delta\rVert \le r\lVert\theta\rVert`.
    ``"per-layer"``: scale each layer's update so that :math:`\lVert\delta_l\rVert \le r\lVert\theta_l\rVert`
    (a layer with zero norm gets radius :math:`r` in absolute units). ``"none"``: unchanged.

    Returns
    -------
    tuple
        The update and the smallest scale factor applied (1.0 when the region was inactive).

    Examples
    --------
    >>> d, s = trust_region({"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([1.0, 0.0])}, "relative", 0.5)
    >>> d["w"], s
    (tensor([0.3000, 0.4000]), 0.1)
    """
    if mode == "none":
        return delta, 1.0
    if mode == "relative":
        d_norm = _dot(delta, delta).sqrt()
        limit = radius * float(_dot(params, params).sqrt())
        factor = min(1.0, limit / float(d_norm)) if float(d_norm) > 0 else 1.0
        return {k: v * factor for k, v in delta.items()}, factor
    if mode != "per-layer":
        raise ValueError(f"trust region mode must be one of 'relative', 'per-layer', 'none'; got {mode!r}")
    d_layers, p_layers = layer_norms(delta), layer_norms(params)
    factors = {
        layer: min(1.0, (radius * (p_layers[layer] or 1.0)) / d) if d > 0 else 1.0
        for layer, d in d_layers.items()
    }
    out = {k: v * factors[k.rsplit(".", 1)[0] if "." in k else k] for k, v in delta.items()}
    return out, min(factors.values())
