"""Covariance of the rows of a data matrix, optionally shrunk towards the scaled identity (a fixed
intensity or the analytic Ledoit-Wolf one).

Every public function validates its input (shape, finiteness, range) before doing any work and raises a
:class:`ValueError` or :class:`TypeError` that says what was wrong. Nothing is silently clamped: where a
result is clipped for floating-point round-off (a Ledoit-Wolf intensity to ``[0, 1]``), the docstring
says so. Spectra and ranks are in :mod:`~shiftlab.functional.spectra`, subspace angles in
:mod:`~shiftlab.functional.subspaces`.
"""

from __future__ import annotations

from typing import Literal

import torch

from shiftlab.functional._checks import _check_int, _compute_dtype
from shiftlab.functional._convert import ArrayLike, as_tensor

__all__ = ["covariance", "ledoit_wolf_shrinkage"]


def ledoit_wolf_shrinkage(x: ArrayLike, *, center: bool = True) -> torch.Tensor:
    r"""Analytic Ledoit-Wolf shrinkage intensity towards the scaled identity.

    With :math:`X \in \mathbb{R}^{n \times d}` (centred unless ``center=False``), the biased sample
    covariance :math:`S = X^\top X / n`, :math:`\mu = \operatorname{tr} S / d`,

    .. math::

        \delta^2 = \frac{1}{d}\lVert S - \mu I\rVert_F^2, \qquad
        \beta^2 = \frac{1}{d\,n^2}\sum_{i=1}^n \lVert x_i x_i^\top - S\rVert_F^2, \qquad
        \alpha = \frac{\min(\beta^2, \delta^2)}{\delta^2},

    (Ledoit & Wolf 2004, *J. Multivariate Anal.* 88:365). This is the formula of
    :func:`sklearn.covariance.ledoit_wolf_shrinkage`. :math:`\alpha` is clipped to ``[0, 1]`` (the
    upper end by the estimator's definition, the lower end only against round-off); when
    :math:`\delta^2 = 0` (``S`` already a multiple of the identity) the intensity is 0. For ``d = 1`` it is 0.

    Parameters
    ----------
    x
        Data of shape ``(n, d)``: ``n >= 2`` observations in rows.
    center
        Subtract the column means first.

    Returns
    -------
    torch.Tensor
        0-d tensor, the intensity :math:`\alpha \in [0, 1]`, in ``x``'s floating dtype.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(50, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> a = ledoit_wolf_shrinkage(x)
    >>> bool(0 <= a <= 1)
    True
    """
    t = as_tensor(x, name="x", ndim=2, min_rows=2)
    return _ledoit_wolf_alpha(t.to(_compute_dtype(t)), center=center).to(t.dtype)


def _ledoit_wolf_alpha(t: torch.Tensor, *, center: bool) -> torch.Tensor:
    n, d = t.shape
    if d == 1:
        return torch.zeros((), dtype=t.dtype, device=t.device)
    xc = t - t.mean(dim=0, keepdim=True) if center else t
    s = xc.T @ xc / n
    mu = torch.diagonal(s).sum() / d
    s_fro2 = (s * s).sum()
    row_norm4 = ((xc * xc).sum(dim=1) ** 2).sum()
    # sum_i ||x_i x_i^T - S||_F^2 = sum_i ||x_i||^4 - n ||S||_F^2
    beta2 = (row_norm4 / n - s_fro2) / (d * n)
    delta2 = (s_fro2 - 2 * mu * torch.diagonal(s).sum() + d * mu * mu) / d
    if float(delta2.detach()) <= 0.0:
        return torch.zeros((), dtype=t.dtype, device=t.device)
    return (torch.minimum(beta2, delta2) / delta2).clamp(0.0, 1.0)


def covariance(
    x: ArrayLike,
    *,
    shrinkage: float | Literal["ledoit-wolf"] = 0.0,
    center: bool = True,
    ddof: int = 1,
) -> torch.Tensor:
    r"""Sample covariance of the rows of ``x``, optionally shrunk towards the scaled identity.

    .. math::

        S = \frac{1}{n - \mathrm{ddof}} X_c^\top X_c, \qquad
        \hat\Sigma = (1 - \alpha)\, S + \alpha\, \frac{\operatorname{tr} S}{d}\, I_d,

    where :math:`X_c` is ``x`` with its column means removed (``center=True``) or ``x`` itself.
    ``shrinkage`` is either a fixed :math:`\alpha \in [0, 1]` or ``"ledoit-wolf"``, in which case
    :math:`\alpha` is the analytic Ledoit-Wolf intensity of :func:`ledoit_wolf_shrinkage` (computed from
    the ``1/n`` covariance, as in the paper and in scikit-learn). The trace target keeps
    :math:`\operatorname{tr}\hat\Sigma = \operatorname{tr} S`. With ``ddof=0`` and ``"ledoit-wolf"`` the
    result equals ``sklearn.covariance.LedoitWolf().fit(x).covariance_``; with ``ddof=1`` it is that
    matrix times :math:`n/(n-1)`.

    The function is differentiable (autograd) in ``x``.

    Parameters
    ----------
    x
        Data of shape ``(n, d)``, observations in rows. ``n`` must exceed ``ddof`` (and be at least 2).
    shrinkage
        Fixed intensity in ``[0, 1]`` (default 0: the plain sample covariance) or ``"ledoit-wolf"``.
    center
        Remove column means. Use ``center=False, ddof=0`` for the second-moment matrix of data whose mean
        is known to be zero.
    ddof
        Delta degrees of freedom: 1 (default, unbiased, as :func:`torch.cov` and :func:`numpy.cov`) or 0
        (maximum likelihood, as scikit-learn).

    Returns
    -------
    torch.Tensor
        Symmetric positive semi-definite matrix of shape ``(d, d)`` in ``x``'s floating dtype (half
        precision is computed in float32).

    Raises
    ------
    ValueError
        If ``x`` is not 2-D, has non-finite values, too few rows, or ``shrinkage`` is out of range.
    TypeError
        If ``shrinkage`` or ``ddof`` has the wrong type.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 2.0], [2.0, 1.0], [3.0, 6.0]], dtype=torch.float64)
    >>> covariance(x)
    tensor([[1., 2.],
            [2., 7.]], dtype=torch.float64)
    >>> covariance(x, shrinkage=0.5)
    tensor([[2.5000, 1.0000],
            [1.0000, 5.5000]], dtype=torch.float64)
    """
    ddof = _check_int(ddof, "ddof", low=0, high=1)
    alpha_fixed: float | None
    if isinstance(shrinkage, str):
        if shrinkage != "ledoit-wolf":
            raise ValueError(f"shrinkage must be a float in [0, 1] or 'ledoit-wolf'; got {shrinkage!r}")
        alpha_fixed = None
    elif isinstance(shrinkage, bool) or not isinstance(shrinkage, int | float):
        raise TypeError(
            f"shrinkage must be a float in [0, 1] or 'ledoit-wolf'; got {type(shrinkage).__name__}"
        )
    else:
        alpha_fixed = float(shrinkage)
        if not 0.0 <= alpha_fixed <= 1.0:
            raise ValueError(f"shrinkage must lie in [0, 1]; got {shrinkage}")
    t = as_tensor(x, name="x", ndim=2, min_rows=max(2, ddof + 1))

    work = t.to(_compute_dtype(t))
    n, d = work.shape
    xc = work - work.mean(dim=0, keepdim=True) if center else work
    s = xc.T @ xc / (n - ddof)
    s = 0.5 * (s + s.T)  # exact symmetry regardless of the matmul's summation order
    if alpha_fixed is None:
        alpha: torch.Tensor | float = _ledoit_wolf_alpha(work, center=center)
    else:
        alpha = alpha_fixed
    if isinstance(alpha, float) and alpha == 0.0:
        return s.to(t.dtype)
    mu = torch.diagonal(s).sum() / d
    eye = torch.eye(d, dtype=s.dtype, device=s.device)
    return ((1 - alpha) * s + alpha * mu * eye).to(t.dtype)
