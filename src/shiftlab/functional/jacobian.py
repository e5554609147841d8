r"""Jacobian energy along directions: :math:`\sum_k a_k \lVert J t_k \rVert^2` per sample.

For a map :math:`h` of a perturbation-site value :math:`s` with Jacobian :math:`J = \partial h / \partial s`
and a covariance :math:`\Sigma = \sum_k a_k t_k t_k^\top`, the expected drift under a small displacement
:math:`n` with :math:`\mathbb{E}[n n^\top] = \Sigma` is

.. math:: \mathbb{E}\lVert h(s + n) - h(s) \rVert^2 \approx \operatorname{tr}(J \Sigma J^\top)
          = \sum_k a_k \lVert J t_k \rVert^2 .

Both engines take ``forward(delta) -> (measured, aux)``, a callable that runs the model with ``delta``
(shape ``(B, *site_shape)``) added at the site and returns the measured representation and an auxiliary
output (typically the model's logits, reused for the task loss). The energies are differentiable with
respect to everything ``forward`` closes over (the model's parameters).

``vectorize=True`` evaluates all tangent blocks in one ``torch.func.vmap`` call, sharing the unperturbed
computation between blocks; it cannot run modules that update buffers in place inside the transform
(BatchNorm in training mode). ``vectorize=False`` loops over blocks with ``torch.autograd.forward_ad``
(JVP) or plain calls (finite differences), which supports such modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwAD  # noqa: N812 - PyTorch's documented alias

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

__all__ = ["Energy", "fd_energy", "jvp_energy"]


class Energy(NamedTuple):
    """Per-sample energy ``(B,)`` and the auxiliary output of the unperturbed forward pass."""

    energy: torch.Tensor
    output: torch.Tensor


def _check_blocks(tangents: torch.Tensor, weights: torch.Tensor) -> int:
    if tangents.ndim < 3:
        raise ValueError(f"tangents must have shape (m, B, *site_shape); got {tuple(tangents.shape)}")
    m = tangents.shape[0]
    if weights.shape != (m,):
        raise ValueError(f"weights must have shape ({m},), one per tangent block; got {tuple(weights.shape)}")
    if not bool(torch.isfinite(tangents).all()) or not bool(torch.isfinite(weights).all()):
        raise ValueError("tangents and weights must be finite")
    return m


def _weighted(derivatives: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(m, B, ...) directional derivatives -> (B,) energy sum_k a_k ||.||^2."""
    per_row = derivatives.flatten(2).pow(2).sum(-1)
    return (weights.to(per_row.dtype).unsqueeze(1) * per_row).sum(0)


def jvp_energy(
    forward: Forward, tangents: torch.Tensor, weights: torch.Tensor, *, vectorize: bool = True
) -> Energy:
    r"""Exact directional derivatives by forward-mode AD: energy :math:`\sum_k a_k \lVert J t_k \rVert^2`.

    Parameters
    ----------
    forward
        ``delta -> (h, aux)``, evaluated at ``delta = 0`` with tangent :math:`t_k`.
    tangents
        ``(m, B, *site_shape)``: block ``k`` holds each sample's tangent :math:`t_k`.
    weights
        ``(m,)`` non-negative weights :math:`a_k`.
    vectorize
        ``torch.func.vmap`` over blocks (fast) or a loop with ``torch.autograd.forward_ad``.

    Returns
    -------
    Energy
        ``energy`` ``(B,)`` and ``output``: ``aux`` of the unperturbed pass.

    Examples
    --------
    >>> w = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    >>> x = torch.ones(4, 2)
    >>> forward = lambda d: ((x + d) @ w.T, x @ w.T)
    >>> jvp_energy(forward, torch.tensor([1.0, 0.0]).expand(1, 4, 2), torch.ones(1)).energy
    tensor([4., 4., 4., 4.])
    """
    m = _check_blocks(tangents, weights)
    zeros = torch.zeros_like(tangents[0])
    if vectorize:

        def one(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            result = torch.func.jvp(forward, (zeros,), (t,), has_aux=True)
            return result[1], result[2]  # type: ignore[misc]  # (primal, tangent, aux) with has_aux

        if m == 1:
            derivative, output = one(tangents[0])
            derivatives = derivative.unsqueeze(0)
        else:
            derivatives, output = torch.func.vmap(one, out_dims=(0, None))(tangents)  # type: ignore[arg-type]
    else:
        found: list[torch.Tensor] = []
        output = torch.empty(0)
        for k in range(m):
            with fwAD.dual_level():
                measured, aux = forward(fwAD.make_dual(zeros, tangents[k]))
                derivative = fwAD.unpack_dual(measured).tangent
                if k == 0:
                    output = fwAD.unpack_dual(aux).primal
            # no tangent: the measured output does not depend on the perturbation, J t = 0
            found.append(torch.zeros_like(measured) if derivative is None else derivative)
        derivatives = torch.stack(found)
    return Energy(_weighted(derivatives, weights), output)


def fd_energy(
    forward: Forward,
    tangents: torch.Tensor,
    weights: torch.Tensor,
    step: float,
    *,
    vectorize: bool = True,
    unperturbed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Energy:
    r"""Forward finite differences: :math:`J t \approx (h(s + \varepsilon t) - h(s)) / \varepsilon`.

    The error is :math:`O(\varepsilon \lVert t \rVert^2 \lVert \nabla^2 h \rVert)`; tangents should be of
    unit scale and ``step`` small against the site's own scale (1e-2 for inputs in [0, 1] is a good
    default in float32, where a much smaller step loses digits to round-off). ``unperturbed`` passes an
    already computed ``forward(0)`` (e.g. rows of the task forward pass) so it is not run again.

    Examples
    --------
    >>> w = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    >>> x = torch.ones(4, 2)
    >>> forward = lambda d: ((x + d) @ w.T, x @ w.T)
    >>> fd_energy(forward, torch.tensor([0.0, 1.0]).expand(1, 4, 2), torch.ones(1), 1e-2).energy
    tensor([9.0000, 9.0000, 9.0000, 9.0000])
    """
    if not step > 0:
        raise ValueError(f"step must be > 0; got {step}")
    m = _check_blocks(tangents, weights)
    base, output = forward(torch.zeros_like(tangents[0])) if unperturbed is None else unperturbed
    if base.shape[0] != tangents.shape[1]:
        raise ValueError(
            f"unperturbed output has {base.shape[0]} rows; the tangents have {tangents.shape[1]}"
        )
    if vectorize and m > 1:
        moved = torch.func.vmap(lambda t: forward(step * t)[0])(tangents)
    else:
        moved = torch.stack([forward(step * tangents[k])[0] for k in range(m)])
    return Energy(_weighted((moved - base.unsqueeze(0)) / step, weights), output)
