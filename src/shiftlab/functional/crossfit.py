"""Cross-fitted nuisance residuals: remove a (nonlinear) function of covariates without overfitting.

A partial correlation given covariates :math:`Z` correlates :math:`x - E[x \\mid Z]` with
:math:`y - E[y \\mid Z]`. Linear least squares is one estimate of the two conditional means; when the
dependence on :math:`Z` is nonlinear, linear residuals keep part of the confounding and a metric looks
informative beyond its baseline when it is not. Fitting a flexible regressor instead, and predicting
each row from a model that never saw it (K-fold cross-fitting; Chernozhukov et al. 2018), removes the
nonlinear part without the residuals being shrunk by overfitting. The residual product is Neyman
orthogonal, so first-order errors in the two fits do not bias the correlation of the residuals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from shiftlab.functional._checks import _check_int
from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.resampling import _generator

__all__ = ["crossfit_residuals", "kernel_ridge_predict"]

Regressor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: Ridge penalties tried by leave-one-out, relative to the unit-diagonal RBF kernel.
RIDGE_GRID: tuple[float, ...] = tuple(
    10.0**e for e in (-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
)
#: Kernel length scales tried by leave-one-out, as multiples of the median pairwise training distance.
LENGTHSCALE_FACTORS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def kernel_ridge_predict(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_test: ArrayLike,
    *,
    lengthscale: float | None = None,
    ridges: tuple[float, ...] = RIDGE_GRID,
) -> torch.Tensor:
    r"""Gaussian-kernel ridge regression with an intercept; length scale and penalty by exact leave-one-out.

    Covariates are standardised with the training mean and standard deviation. With
    :math:`K_{ij} = \exp(-\lVert x_i - x_j\rVert^2 / (2\ell^2))`, :math:`K = U \operatorname{diag}(s) U^\top`
    and centred targets
    :math:`\tilde y = y - \bar y`, the hat matrix of penalty :math:`\lambda` is
    :math:`H_\lambda = U \operatorname{diag}(s / (s + \lambda)) U^\top`, and its exact leave-one-out residuals
    are :math:`(\tilde y_i - (H_\lambda \tilde y)_i) / (1 - (H_\lambda)_{ii})`. For each target column the
    pair (:math:`\ell`, :math:`\lambda`) with the smallest mean squared leave-one-out residual is used,
    :math:`\ell` among :data:`LENGTHSCALE_FACTORS` times the median pairwise training distance (unless
    ``lengthscale`` is given) and :math:`\lambda` among ``ridges``:

    .. math:: \hat y(x) = \bar y + k(x, X)\,(K + \lambda I)^{-1} \tilde y.

    Cost :math:`O(n^3)` in the training size (one eigendecomposition per length scale).

    Parameters
    ----------
    x_train
        Shape ``(n, k)`` or ``(n,)``; ``n >= 3``.
    y_train
        Shape ``(n,)`` or ``(n, m)``.
    x_test
        Shape ``(t, k)`` or ``(t,)``.
    lengthscale
        Kernel length scale in standardised units; ``None`` to choose it by leave-one-out.
    ridges
        Candidate penalties (positive).

    Returns
    -------
    torch.Tensor
        Predictions, shape ``(t,)`` or ``(t, m)`` like ``y_train``; float64.

    Examples
    --------
    >>> import torch
    >>> x = torch.linspace(-3, 3, 80, dtype=torch.float64)
    >>> y = torch.sin(2 * x)
    >>> pred = kernel_ridge_predict(x[::2], y[::2], x[1::2])
    >>> bool((pred - y[1::2]).abs().max() < 0.02)
    True
    """
    xt = as_tensor(x_train, name="x_train", ndim=(1, 2), min_rows=3).to(torch.float64)
    yt = as_tensor(y_train, name="y_train", ndim=(1, 2)).to(device=xt.device, dtype=torch.float64)
    xs = as_tensor(x_test, name="x_test", ndim=(1, 2)).to(device=xt.device, dtype=torch.float64)
    xt = xt[:, None] if xt.ndim == 1 else xt
    xs = xs[:, None] if xs.ndim == 1 else xs
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"x_test has {xs.shape[1]} columns but x_train has {xt.shape[1]}")
    if yt.shape[0] != xt.shape[0]:
        raise ValueError(f"y_train has {yt.shape[0]} rows but x_train has {xt.shape[0]}")
    if not ridges or any(not (isinstance(r, int | float) and r > 0) for r in ridges):
        raise ValueError(f"ridges must be a non-empty tuple of positive numbers; got {ridges!r}")
    vector = yt.ndim == 1
    y2 = yt[:, None] if vector else yt
    xt, xs = _standardise(xt, xs)
    d2 = torch.cdist(xt, xt).pow(2)
    if lengthscale is None:
        off = d2[~torch.eye(d2.shape[0], dtype=torch.bool, device=d2.device)]
        positive = off[off > 0]
        if positive.numel() == 0:
            raise ValueError("all training covariate rows are identical: nothing to regress on")
        median = float(positive.median().sqrt())
        scales = tuple(median * f for f in LENGTHSCALE_FACTORS)
    else:
        if not lengthscale > 0:
            raise ValueError(f"lengthscale must be positive; got {lengthscale}")
        scales = (float(lengthscale),)
    mean = y2.mean(dim=0, keepdim=True)
    yc = y2 - mean
    lam = torch.tensor(ridges, dtype=torch.float64, device=xt.device)  # (L,)
    best_err = torch.full((y2.shape[1],), float("inf"), dtype=torch.float64, device=xt.device)
    coef = torch.zeros_like(yc)
    best_scale = torch.zeros(y2.shape[1], dtype=torch.float64, device=xt.device)
    for ell in scales:
        s, u = torch.linalg.eigh(torch.exp(-d2 / (2.0 * ell**2)))
        s = s.clamp(min=0.0)
        uy = u.T @ yc  # (n, m)
        shrink = s[None, :] / (s[None, :] + lam[:, None])  # (L, n)
        fitted = torch.einsum("in,ln,nm->lim", u, shrink, uy)  # (L, n, m)
        leverage = torch.einsum("in,ln->li", u * u, shrink)  # (L, n)
        loo = (yc[None] - fitted) / (1.0 - leverage)[..., None].clamp(min=1e-12)
        err, best = loo.pow(2).mean(dim=1).min(dim=0)  # (m,)
        better = err < best_err
        candidate = u @ (uy / (s[:, None] + lam[best][None, :]))  # (n, m)
        coef = torch.where(better[None, :], candidate, coef)
        best_scale = torch.where(better, torch.full_like(best_scale, ell), best_scale)
        best_err = torch.minimum(err, best_err)
    k_test = torch.exp(-torch.cdist(xs, xt).pow(2)[:, :, None] / (2.0 * best_scale**2))  # (t, n, m)
    pred = mean + torch.einsum("tnm,nm->tm", k_test, coef)
    return pred[:, 0] if vector else pred


def _linear_predict(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor) -> torch.Tensor:
    """Ordinary least squares with an intercept (minimum-norm solution)."""
    xt, xs = _standardise(x_train, x_test)
    design = torch.cat([torch.ones_like(xt[:, :1]), xt], dim=1)
    coef = torch.linalg.pinv(design, rtol=1e-10) @ y_train
    return torch.cat([torch.ones_like(xs[:, :1]), xs], dim=1) @ coef


def _folds(n: int, n_folds: int, groups: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """Fold index of each row: a seeded shuffle of rows (or of groups) dealt round-robin."""
    if groups is None:
        order = torch.randperm(n, generator=gen)
        fold = torch.empty(n, dtype=torch.long)
        fold[order] = torch.arange(n) % n_folds
        return fold
    _, codes = torch.unique(groups, sorted=True, return_inverse=True)
    n_groups = int(codes.max()) + 1
    if n_groups < n_folds:
        raise ValueError(f"groups has {n_groups} distinct values, fewer than n_folds={n_folds}")
    group_fold = torch.empty(n_groups, dtype=torch.long)
    group_fold[torch.randperm(n_groups, generator=gen)] = torch.arange(n_groups) % n_folds
    return group_fold[codes.cpu()]


def crossfit_residuals(
    y: ArrayLike,
    covariates: ArrayLike,
    *,
    regressor: Literal["kernel_ridge", "linear"] | Regressor = "kernel_ridge",
    n_folds: int = 5,
    seed: int | torch.Generator = 0,
    groups: ArrayLike | None = None,
) -> torch.Tensor:
    r"""K-fold cross-fitted residuals :math:`y_i - \hat m^{(-f(i))}(z_i)` of ``y`` on ``covariates``.

    Rows are dealt into ``n_folds`` folds by a seeded shuffle (whole ``groups`` stay in one fold, so rows
    of one seed or one run never predict each other); each fold's predictions come from ``regressor``
    fitted on the other folds. Residuals of several columns of ``y`` share the folds.

    Parameters
    ----------
    y
        Shape ``(n,)`` or ``(n, m)``.
    covariates
        Shape ``(n,)`` or ``(n, k)``.
    regressor
        ``"kernel_ridge"`` (:func:`kernel_ridge_predict`), ``"linear"`` (least squares with an intercept),
        or a callable ``(z_train, y_train, z_test) -> predictions`` on float64 tensors (``y_train`` is 2-D
        ``(n_train, m)``; return ``(n_test, m)``), e.g. a wrapper around a scikit-learn regressor.
    n_folds
        Number of folds, ``2 <= n_folds <= n // 3``.
    seed
        An int, or a CPU :class:`torch.Generator`.
    groups
        Optional ``(n,)`` numeric labels kept together in one fold.

    Returns
    -------
    torch.Tensor
        Residuals shaped like ``y``, float64.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.rand(150, generator=g, dtype=torch.float64) * 6 - 3
    >>> noise = 0.1 * torch.randn(150, generator=g, dtype=torch.float64)
    >>> e = crossfit_residuals(torch.sin(2 * z) + noise, z, seed=0)
    >>> round(float(e.std()), 1)  # the noise level: the nonlinear part is gone
    0.1
    """
    ty = as_tensor(y, name="y", ndim=(1, 2)).to(torch.float64)
    tz = as_tensor(covariates, name="covariates", ndim=(1, 2)).to(device=ty.device, dtype=torch.float64)
    n = ty.shape[0]
    tz = tz[:, None] if tz.ndim == 1 else tz
    if tz.shape[0] != n:
        raise ValueError(f"covariates must have {n} rows (one per observation); got {tz.shape[0]}")
    n_folds = _check_int(n_folds, "n_folds", low=2)
    if n_folds > n // 3:
        raise ValueError(f"n_folds={n_folds} leaves folds of fewer than 3 rows for n={n}; use <= {n // 3}")
    if regressor == "kernel_ridge":
        fit_predict: Regressor = kernel_ridge_predict
    elif regressor == "linear":
        fit_predict = _linear_predict
    elif callable(regressor):
        fit_predict = regressor
    else:
        raise ValueError(f"regressor must be 'kernel_ridge', 'linear' or a callable; got {regressor!r}")
    tg = None
    if groups is not None:
        tg = as_tensor(groups, name="groups", ndim=1)
        if tg.shape[0] != n:
            raise ValueError(f"groups must have one label per row ({n}); got {tg.shape[0]}")
    fold = _folds(n, n_folds, tg, _generator(seed)).to(ty.device)
    y2 = ty[:, None] if ty.ndim == 1 else ty
    resid = torch.empty_like(y2)
    for f in range(n_folds):
        test = fold == f
        pred = fit_predict(tz[~test], y2[~test], tz[test])
        if not isinstance(pred, torch.Tensor):
            raise TypeError(f"regressor must return a torch.Tensor; got {type(pred).__name__}")
        pred = pred.to(torch.float64).reshape(int(test.sum()), -1)
        if pred.shape[1] != y2.shape[1] or not bool(torch.isfinite(pred).all()):
            raise ValueError(
                f"regressor must return finite predictions of shape ({int(test.sum())}, {y2.shape[1]}); "
                f"got {tuple(pred.shape)}"
            )
        resid[test] = y2[test] - pred
    return resid[:, 0] if ty.ndim == 1 else resid
