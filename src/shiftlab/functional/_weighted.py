r"""Weighted ranks and weighted least-squares partial correlation behind
:mod:`shiftlab.functional.cluster_bootstrap`, on validated float64 tensors.

A weight vector :math:`w` stands for the sample that repeats row :math:`i` :math:`w_i` times, so one
``(B, n)`` weight matrix evaluates ``B`` bootstrap resamples at once. The public, documented entry points
(:func:`~shiftlab.functional.weighted_rankdata`, :func:`~shiftlab.functional.weighted_partial_correlation`,
:func:`~shiftlab.functional.weighted_correlations`) validate their input and call these.
"""

from __future__ import annotations

import torch

from shiftlab.functional._convert import ArrayLike, as_tensor

#: A residual whose weighted norm is below this fraction of the centred input's norm counts as zero.
_ZERO_RESIDUAL = 1e-10


def _check_weights(w: torch.Tensor) -> None:
    if bool((w < 0).any()):
        raise ValueError(f"weights must be nonnegative; got minimum {float(w.min()):.3g}")


def _ranks(t: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`weighted_rankdata` without validation. ``t`` is sorted in its own (un-broadcast) shape, so
    many weight vectors over one data vector cost one sort plus a cumulative sum per weight vector."""
    ndim = max(t.ndim, w.ndim)
    t = t.reshape((1,) * (ndim - t.ndim) + tuple(t.shape))
    w = w.reshape((1,) * (ndim - w.ndim) + tuple(w.shape))
    tm = t.movedim(dim, -1).contiguous()
    wm = w.movedim(dim, -1)
    full = torch.broadcast_shapes(tm.shape, wm.shape)
    sorted_values, order = torch.sort(tm, dim=-1)
    below = torch.searchsorted(sorted_values, tm, right=False)
    at_or_below = torch.searchsorted(sorted_values, tm, right=True)
    cumulative = torch.cumsum(wm.expand(full).gather(-1, order.expand(full)), dim=-1)
    cumulative = torch.cat([torch.zeros_like(cumulative[..., :1]), cumulative], dim=-1)
    lower = cumulative.gather(-1, below.expand(full))
    upper = cumulative.gather(-1, at_or_below.expand(full))
    return ((lower + 1.0 + upper) / 2.0).movedim(-1, dim)


def _validated(
    x: ArrayLike, y: ArrayLike, covariates: ArrayLike | None, weights: ArrayLike | None, method: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Size]:
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman'; got {method!r}")
    tx = as_tensor(x, name="x").to(torch.float64)
    ty = as_tensor(y, name="y").to(device=tx.device, dtype=torch.float64)
    if tx.ndim == 0 or ty.ndim == 0:
        raise ValueError("x and y must have at least one dimension (observations on the last)")
    n = tx.shape[-1]
    if ty.shape[-1] != n:
        raise ValueError(f"x and y must have the same number of observations; got {n} and {ty.shape[-1]}")
    tz = None
    k = 0
    if covariates is not None:
        tz = as_tensor(covariates, name="covariates").to(device=tx.device, dtype=torch.float64)
        if tz.ndim < 2 or tz.shape[-2] != n:
            raise ValueError(
                f"covariates must have shape (..., n={n}, k); got {tuple(tz.shape)} (use [:, None] for one)"
            )
        k = tz.shape[-1]
        tz = tz if k > 0 else None
    if n < k + 3:
        raise ValueError(f"need at least k + 3 = {k + 3} observations for k={k} covariate(s); got n={n}")
    if weights is None:
        tw = torch.ones(n, dtype=torch.float64, device=tx.device)
    else:
        tw = as_tensor(weights, name="weights").to(device=tx.device, dtype=torch.float64)
        _check_weights(tw)
        if tw.ndim == 0 or tw.shape[-1] != n:
            raise ValueError(f"weights must have n={n} entries on the last dimension; got {tuple(tw.shape)}")
        if bool((tw.sum(dim=-1) <= 0).any()):
            raise ValueError("every batch of weights must have a positive sum")
    z_batch = tz.shape[:-2] if tz is not None else torch.Size()
    try:
        batch = torch.broadcast_shapes(tx.shape[:-1], ty.shape[:-1], z_batch, tw.shape[:-1])
    except RuntimeError as err:
        raise ValueError(
            f"batch shapes do not broadcast: x {tuple(tx.shape)}, y {tuple(ty.shape)}, "
            f"covariates {None if tz is None else tuple(tz.shape)}, weights {tuple(tw.shape)}"
        ) from err
    return tx, ty, tz, tw, batch


def _rank_all(
    x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return _ranks(x, w, -1), _ranks(y, w, -1), None if z is None else _ranks(z, w[..., :, None], -2)


def _centre(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Subtract the weighted mean along the last dimension."""
    return v - (w * v).sum(dim=-1, keepdim=True) / w.sum(dim=-1, keepdim=True)


def _partial(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
    """Weighted partial correlation on validated (already ranked, if Spearman) float64 inputs.

    ``x`` and ``y`` are residualised separately, each in its own broadcast shape, so a target shared by
    many metrics is residualised once; the design's weighted Gram pseudo-inverse is computed once.
    """
    xc, yc = _centre(x, w), _centre(y, w)
    if z is not None:
        wz = w[..., :, None]
        d = z - (wz * z).sum(dim=-2, keepdim=True) / wz.sum(dim=-2, keepdim=True)
        norms = torch.sqrt((wz * d * d).sum(dim=-2, keepdim=True))
        d = d / torch.where(norms > 0, norms, torch.ones_like(norms))
        wd = wz * d
        solve = torch.linalg.pinv(d.mT @ wd, hermitian=True, rtol=1e-10)  # (..., k, k)

        def residual(v: torch.Tensor) -> torch.Tensor:
            beta = solve @ (wd.mT @ v[..., :, None])  # (..., k, 1)
            return v - (d @ beta)[..., 0]

        ex, ey = residual(xc), residual(yc)
    else:
        ex, ey = xc, yc
    sx, sy = (w * xc * xc).sum(dim=-1), (w * yc * yc).sum(dim=-1)
    nx, ny = (w * ex * ex).sum(dim=-1), (w * ey * ey).sum(dim=-1)
    cross = (w * ex * ey).sum(dim=-1)
    tol = _ZERO_RESIDUAL**2
    undefined = (nx <= tol * sx) | (ny <= tol * sy) | (sx == 0) | (sy == 0)
    undefined = torch.broadcast_to(undefined, cross.shape)
    denom = torch.sqrt(torch.broadcast_to(nx * ny, cross.shape))
    safe = torch.where(undefined, torch.ones_like(denom), denom)
    return torch.where(undefined, torch.full_like(cross, float("nan")), (cross / safe).clamp(-1.0, 1.0))
