r"""Congested transport behind WGAN-GP (Milne & Nachman, COLT 2022, arXiv:2109.00528), and the speed cap.

The one-sided WGAN-GP critic problem, with :math:`\sigma` the density of the gradient-penalty interpolates
:math:`\hat x = t x + (1 - t) y` (:math:`x \sim \mu` generated, :math:`y \sim \nu` real,
:math:`t \sim U[0, 1]`) and :math:`\lambda` the penalty weight,

.. math::

    \sup_u\ \mathbb E_\nu[u] - \mathbb E_\mu[u]
    - \lambda\,\mathbb E_\sigma\bigl[(\lvert\nabla u\rvert - 1)_+^2\bigr],

is the convex dual of the congested transport problem

.. math::

    \min_{\operatorname{div} w = \mu - \nu} \int H(x, \lvert w(x)\rvert)\,dx, \qquad
    H(x, z) = z + \frac{z^2}{4\lambda\sigma(x)},

and an optimal flow is
:math:`w = 2\lambda\sigma\,(\lvert\nabla u\rvert - 1)_+\,\nabla u / \lvert\nabla u\rvert`.

Constants, derived here: the convex conjugate of :math:`p \mapsto \lambda\sigma(\lvert p\rvert - 1)_+^2` is
:math:`z \mapsto z + z^2/(4\lambda\sigma)` (maximise :math:`z r - \lambda\sigma (r - 1)_+^2` over
:math:`r \ge 0`: :math:`r = 1 + z/(2\lambda\sigma)`), and the flow is the gradient of that function at
:math:`\nabla u`. Writing the congestion term as :math:`z^2/(2\lambda\sigma)` corresponds to a penalty
weight :math:`\lambda/2`, i.e. off by a factor 2 for the usual :math:`\lambda` (10 in Gulrajani et al.).
Only the paper's abstract could be consulted offline; the constants above rest on this derivation and on
a brute-force check of the conjugate in the tests. The two-sided penalty :math:`(\lvert\nabla u\rvert-1)^2`
also penalises slow regions and is not of this form.

:math:`\lambda\sigma(x)` acts as a local capacity: moving flux :math:`z` through :math:`x` costs
:math:`1 + z/(2\lambda\sigma(x))` at the margin, so transport is cheap where interpolates are dense.
:func:`relative_capacity` turns a kernel estimate of :math:`\sigma` into per-particle factors for the
speed cap of :func:`cap_speed`.
"""

from __future__ import annotations

import math

import torch

from shiftlab.functional import as_tensor

__all__ = [
    "cap_speed",
    "congestion_cost",
    "congestion_flow",
    "interpolation_points",
    "relative_capacity",
]


def _positive(value: float, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return float(value)


def congestion_cost(flux: torch.Tensor, sigma: torch.Tensor, lam: float) -> torch.Tensor:
    r"""Congestion cost density :math:`H(x, z) = z + z^2 / (4\lambda\sigma(x))`.

    Parameters
    ----------
    flux
        Flux magnitudes :math:`z = \lvert w(x)\rvert \ge 0`, any shape.
    sigma
        Interpolate density :math:`\sigma(x) > 0`, broadcastable to ``flux``.
    lam
        Gradient-penalty weight :math:`\lambda > 0`.

    Returns
    -------
    torch.Tensor
        :math:`H` elementwise.

    Examples
    --------
    >>> congestion_cost(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0]), lam=0.5)
    tensor([0., 4.])
    """
    z = as_tensor(flux, name="flux")
    s = as_tensor(sigma, name="sigma").to(z)
    lam = _positive(lam, "lam")
    if bool((z < 0).any()):
        raise ValueError("flux magnitudes must be non-negative")
    if bool((s <= 0).any()):
        raise ValueError("sigma must be positive where the cost is evaluated")
    return z + z * z / (4.0 * lam * s)


def congestion_flow(critic_grad: torch.Tensor, sigma: torch.Tensor, lam: float) -> torch.Tensor:
    r"""Optimal congested flow from a critic gradient.

    .. math:: w = 2\lambda\sigma\,(\lvert\nabla u\rvert - 1)_+\,\nabla u/\lvert\nabla u\rvert.


    This is :math:`\nabla_p` of :math:`\lambda\sigma(\lvert p\rvert - 1)_+^2` at :math:`p = \nabla u`: the
    time-averaged momentum of the optimal mass flow (direction: from generated towards real data, for a
    critic that scores real data high). Zero wherever :math:`\lvert\nabla u\rvert \le 1`.

    Parameters
    ----------
    critic_grad
        ``(n, d)`` critic gradients :math:`\nabla u(x_i)`.
    sigma
        ``(n,)`` interpolate density at the same points.
    lam
        Gradient-penalty weight.

    Returns
    -------
    torch.Tensor
        ``(n, d)`` flow vectors.

    Examples
    --------
    >>> congestion_flow(torch.tensor([[3.0, 0.0], [0.5, 0.0]]), torch.tensor([1.0, 1.0]), lam=0.5)
    tensor([[2., 0.],
            [0., 0.]])
    """
    g = as_tensor(critic_grad, name="critic_grad", ndim=2)
    s = as_tensor(sigma, name="sigma", ndim=1).to(g)
    lam = _positive(lam, "lam")
    if s.shape[0] != g.shape[0]:
        raise ValueError(f"sigma needs one value per gradient ({g.shape[0]}); got {s.shape[0]}")
    norm = g.norm(dim=1, keepdim=True)
    excess = (norm - 1.0).clamp_min(0.0)
    direction = torch.where(norm > 0, g / norm.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))
    return 2.0 * lam * s[:, None] * excess * direction


def interpolation_points(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    r"""Gradient-penalty interpolates :math:`\hat x_i = t_i x_i + (1 - t_i) y_{\pi(i)}`.

    ``y`` is paired with ``x`` by a random permutation (independent pairs, as in WGAN-GP's sampling), or
    resampled with replacement when the sizes differ. The law of the output is the :math:`\sigma` of the
    module docstring.

    Parameters
    ----------
    x, y
        ``(n, d)`` generated and ``(m, d)`` target points.
    generator
        Source of randomness (CPU generator).

    Returns
    -------
    torch.Tensor
        ``(n, d)``.

    Examples
    --------
    >>> pts = interpolation_points(torch.zeros(4, 2), torch.ones(4, 2), torch.Generator().manual_seed(0))
    >>> bool(((pts >= 0) & (pts <= 1)).all())
    True
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, d) and (m, d); got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    idx = torch.randperm(m, generator=generator) if m == n else torch.randint(0, m, (n,), generator=generator)
    t = torch.rand(n, 1, generator=generator, dtype=x.dtype).to(x.device)
    return t * x + (1.0 - t) * y[idx.to(y.device)]


def relative_capacity(
    particles: torch.Tensor, interpolates: torch.Tensor, bandwidth: float | None = None
) -> torch.Tensor:
    r"""Per-particle capacity factors :math:`c_i = \hat\sigma(x_i) / \tfrac1n\sum_j \hat\sigma(x_j)`.

    :math:`\hat\sigma` is a Gaussian kernel density estimate of the interpolates, with Scott's bandwidth
    :math:`h = s\,N^{-1/(d+4)}` (:math:`s` the mean per-coordinate standard deviation of the interpolates)
    unless ``bandwidth`` is given. Because :math:`\lambda\sigma` is the local capacity of the congested
    problem, :math:`c_i` scales a particle's speed limit: above 1 on busy transport corridors, below 1
    away from them; the mean of :math:`c` is 1 so the base cap keeps its units.

    Parameters
    ----------
    particles
        ``(n, d)`` points where the capacity is needed.
    interpolates
        ``(N, d)`` samples of :math:`\sigma` (from :func:`interpolation_points`).
    bandwidth
        Kernel width in data units, or ``None`` for Scott's rule.

    Returns
    -------
    torch.Tensor
        ``(n,)`` non-negative factors with mean 1.

    Examples
    --------
    >>> c = relative_capacity(torch.tensor([[0.0], [5.0]]), torch.zeros(10, 1), bandwidth=1.0)
    >>> c.round(decimals=3)
    tensor([2., 0.])
    """
    if particles.ndim != 2 or interpolates.ndim != 2 or particles.shape[1] != interpolates.shape[1]:
        raise ValueError("particles and interpolates must be (n, d) and (N, d) with the same d")
    n_int, d = interpolates.shape
    if bandwidth is None:
        spread = float(interpolates.std(dim=0).mean()) if n_int > 1 else 0.0
        if spread <= 0:
            raise ValueError("interpolates have zero spread; give an explicit bandwidth")
        h = spread * n_int ** (-1.0 / (d + 4))
    else:
        h = _positive(bandwidth, "bandwidth")
    sq = torch.cdist(particles, interpolates).square()
    log_density = torch.logsumexp(-sq / (2.0 * h * h), dim=1)
    density = torch.exp(log_density - log_density.max())
    mean = density.mean()
    if not float(mean) > 0:
        raise ValueError("kernel density underflows at every particle; increase the bandwidth")
    return density / mean


def cap_speed(displacement: torch.Tensor, cap: torch.Tensor | float) -> torch.Tensor:
    r"""Limit each particle's step to its cap: :math:`v_i \leftarrow v_i \min(1, \kappa_i/\lVert v_i\rVert)`.

    This is the congestion bound of the perturbers: no particle is asked to move farther than
    :math:`\kappa_i` in one step. Directions are kept.

    Parameters
    ----------
    displacement
        ``(n, d)`` requested steps.
    cap
        Scalar or ``(n,)`` non-negative caps :math:`\kappa_i` (data units).

    Returns
    -------
    torch.Tensor
        ``(n, d)`` capped steps, each with norm :math:`\le \kappa_i`.

    Examples
    --------
    >>> cap_speed(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """
    if displacement.ndim != 2:
        raise ValueError(f"displacement must be (n, d); got {tuple(displacement.shape)}")
    kappa = torch.as_tensor(cap, dtype=displacement.dtype, device=displacement.device)
    if kappa.ndim == 0:
        kappa = kappa.expand(displacement.shape[0])
    if kappa.shape != (displacement.shape[0],):
        raise ValueError(f"cap must be a scalar or have shape ({displacement.shape[0]},)")
    if bool((kappa < 0).any()) or not bool(torch.isfinite(kappa).all()):
        raise ValueError("caps must be finite and non-negative")
    norm = displacement.norm(dim=1)
    scale = torch.where(
        norm > kappa, kappa / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.ones_like(norm)
    )
    return displacement * scale[:, None]
