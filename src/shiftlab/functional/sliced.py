r"""Sliced 2-Wasserstein distance: exact 1-D W2 along random (or given) directions, averaged.

Conventions as in :mod:`~shiftlab.functional.transport`: the result is in data units.
"""

from __future__ import annotations

import torch

from shiftlab.functional._checks import _check_int
from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.transport import _clouds

__all__ = ["sliced_wasserstein2"]


def sliced_wasserstein2(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_projections: int = 128,
    seed: int | torch.Generator = 0,
    projections: ArrayLike | None = None,
) -> torch.Tensor:
    r"""Sliced 2-Wasserstein distance between two uniformly weighted clouds.

    .. math::

        SW_2(\alpha, \beta)
        = \Bigl(\frac1L\sum_{l=1}^L W_2^2(\theta_l^\top\alpha, \theta_l^\top\beta)\Bigr)^{1/2},

    with :math:`L` random unit directions :math:`\theta_l` and the 1-D :math:`W_2^2` computed exactly
    from quantile functions (sorting; ``n`` and ``m`` may differ). Data units; :math:`SW_2 \le W_2`.
    This is POT's ``sliced_wasserstein_distance`` with ``p=2`` for the same directions.

    Parameters
    ----------
    x, y
        Point clouds ``(n, d)`` and ``(m, d)``.
    n_projections
        Number of random directions (ignored when ``projections`` is given).
    seed
        Seed or generator for the directions (drawn on the CPU).
    projections
        Explicit directions ``(d, L)``; each column is normalised to unit length.

    Returns
    -------
    torch.Tensor
        0-d tensor, differentiable in ``x`` and ``y``.

    Examples
    --------
    >>> x = [[0.0, 0.0], [1.0, 1.0]]
    >>> float(sliced_wasserstein2(x, [[2.0, 0.0], [3.0, 1.0]], projections=[[1.0], [0.0]]))
    2.0
    """
    xt, yt = _clouds(x, y)
    d = xt.shape[1]
    if projections is None:
        n_projections = _check_int(n_projections, "n_projections", low=1)
        gen = (
            seed
            if isinstance(seed, torch.Generator)
            else torch.Generator().manual_seed(_check_int(seed, "seed"))
        )
        theta = torch.randn(d, n_projections, generator=gen, dtype=torch.float64)
    else:
        theta = as_tensor(projections, name="projections", ndim=2).double().cpu()
        if theta.shape[0] != d:
            raise ValueError(f"projections must have shape ({d}, L); got {tuple(theta.shape)}")
    norms = theta.norm(dim=0, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("projections contain a zero direction")
    theta = (theta / norms).to(dtype=xt.dtype, device=xt.device)
    px, _ = torch.sort(xt @ theta, dim=0)
    py, _ = torch.sort(yt @ theta, dim=0)
    n, m = px.shape[0], py.shape[0]
    # merge the quantile levels of both empirical CDFs; on each interval both quantile functions are constant
    levels = torch.cat([torch.arange(1, n + 1) / n, torch.arange(1, m + 1) / m]).double()
    levels, _ = torch.sort(levels)
    widths = torch.diff(levels, prepend=torch.zeros(1, dtype=torch.float64))
    mid = (levels - widths / 2).clamp(0.0, 1.0)
    ix = torch.clamp((mid * n).long(), max=n - 1).to(xt.device)
    iy = torch.clamp((mid * m).long(), max=m - 1).to(xt.device)
    w = widths.to(dtype=xt.dtype, device=xt.device)
    per_direction = ((px[ix] - py[iy]) ** 2 * w[:, None]).sum(0)
    return per_direction.mean().sqrt()
