"""Statistics on tensors: ranks, Pearson and Spearman correlations, partial correlation with p-value and CI.

Resampling (paired bootstrap, permutation tests) is in :mod:`~shiftlab.functional.resampling`,
Benjamini-Hochberg FDR control in :mod:`~shiftlab.functional.fdr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from shiftlab.functional._checks import _check_open_unit
from shiftlab.functional._convert import ArrayLike, as_tensor

__all__ = [
    "PartialCorrelation",
    "mean_difference",
    "partial_correlation",
    "pearson",
    "rankdata",
    "spearman",
]

# ----------------------------------------------------------------------------------------------------------
# ranks and correlations
# ----------------------------------------------------------------------------------------------------------


def rankdata(x: ArrayLike, dim: int = -1) -> torch.Tensor:
    r"""Ranks along ``dim``, 1-based, ties get the average of the ranks they span.

    For an element :math:`x_i` of a slice of length :math:`n`, with :math:`L_i = \#\{j: x_j < x_i\}` and
    :math:`U_i = \#\{j: x_j \le x_i\}`,

    .. math:: \operatorname{rank}(x_i) = \frac{L_i + 1 + U_i}{2},

    the mean of the positions :math:`L_i + 1, \dots, U_i` that the tie group occupies. This is
    :func:`scipy.stats.rankdata` with ``method="average"``. Ranks of every slice sum to :math:`n(n+1)/2`.

    Parameters
    ----------
    x
        Any shape with at least one dimension; ranked independently along ``dim``.
    dim
        The dimension to rank along.

    Returns
    -------
    torch.Tensor
        Same shape as ``x``, dtype float64 (ranks are exact half-integers), on ``x``'s device.

    Examples
    --------
    >>> rankdata([10.0, 30.0, 20.0, 20.0])
    tensor([1.0000, 4.0000, 2.5000, 2.5000], dtype=torch.float64)
    """
    t = as_tensor(x, name="x")
    if t.ndim == 0:
        raise ValueError("x must have at least one dimension")
    if not -t.ndim <= dim < t.ndim:
        raise ValueError(f"dim {dim} out of range for x of shape {tuple(t.shape)}")
    moved = t.movedim(dim, -1).contiguous()
    if moved.shape[-1] == 0:
        return torch.zeros(t.shape, dtype=torch.float64, device=t.device)
    sorted_values = torch.sort(moved, dim=-1).values
    below = torch.searchsorted(sorted_values, moved, right=False)
    at_or_below = torch.searchsorted(sorted_values, moved, right=True)
    ranks = (below + at_or_below + 1).to(torch.float64) / 2
    return ranks.movedim(-1, dim)


def _normal_quantile(q: float) -> float:
    """Standard normal quantile :math:`\\Phi^{-1}(q)` in float64."""
    return float(torch.special.ndtri(torch.tensor(q, dtype=torch.float64)))


def _paired(x: ArrayLike, y: ArrayLike, dim: int, *, min_n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    tx = as_tensor(x, name="x")
    ty = as_tensor(y, name="y")
    if tx.ndim == 0 or ty.ndim == 0:
        raise ValueError("x and y must have at least one dimension")
    try:
        bx, by = torch.broadcast_tensors(tx, ty)
    except RuntimeError as err:
        raise ValueError(
            f"x and y must broadcast together; got shapes {tuple(tx.shape)} and {tuple(ty.shape)}"
        ) from err
    if not -bx.ndim <= dim < bx.ndim:
        raise ValueError(f"dim {dim} out of range for shape {tuple(bx.shape)}")
    n = bx.shape[dim]
    if n < min_n:
        raise ValueError(f"need at least {min_n} paired observations along dim {dim}; got {n}")
    dtype = torch.promote_types(bx.dtype, by.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    return bx.to(dtype), by.to(dtype), n


def pearson(x: ArrayLike, y: ArrayLike, *, dim: int = -1) -> torch.Tensor:
    r"""Pearson correlation along ``dim``, batched over the other (broadcast) dimensions.

    .. math::

        r = \frac{\sum_i (x_i - \bar x)(y_i - \bar y)}
                 {\sqrt{\sum_i (x_i - \bar x)^2}\,\sqrt{\sum_i (y_i - \bar y)^2}},

    clipped to ``[-1, 1]`` against round-off. Differentiable. Suitable as a vectorised statistic for
    :func:`paired_bootstrap_ci` and :func:`permutation_test` with 1-D samples (they arrive as
    ``(batch, n)``).

    Parameters
    ----------
    x, y
        Broadcastable tensors; ``n >= 2`` observations along ``dim``.
    dim
        The observation dimension.

    Returns
    -------
    torch.Tensor
        The broadcast shape without ``dim``.

    Raises
    ------
    ValueError
        If any slice of ``x`` or ``y`` is constant (zero variance: the correlation is undefined), the
        shapes do not broadcast, or there are fewer than 2 observations.

    Examples
    --------
    >>> pearson([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    tensor(0.8000, dtype=torch.float64)
    """
    bx, by, _ = _paired(x, y, dim, min_n=2)
    xc = bx - bx.mean(dim=dim, keepdim=True)
    yc = by - by.mean(dim=dim, keepdim=True)
    sxx = (xc * xc).sum(dim=dim)
    syy = (yc * yc).sum(dim=dim)
    bad = (sxx == 0) | (syy == 0)
    if bool(bad.any()):
        raise ValueError(
            f"correlation is undefined for constant data: {int(bad.sum())} slice(s) of x or y have zero "
            "variance"
        )
    r = (xc * yc).sum(dim=dim) / torch.sqrt(sxx * syy)
    return r.clamp(-1.0, 1.0)


def spearman(x: ArrayLike, y: ArrayLike, *, dim: int = -1) -> torch.Tensor:
    r"""Spearman rank correlation: :func:`pearson` of the average-tie ranks (:func:`rankdata`).

    .. math:: \rho = \operatorname{pearson}(\operatorname{rank}(x), \operatorname{rank}(y)).

    Equals :func:`scipy.stats.spearmanr` (including ties). Not differentiable (ranks are piecewise
    constant). Batched like :func:`pearson`; returns float64.

    Examples
    --------
    >>> spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 40.0, 30.0])
    tensor(0.8000, dtype=torch.float64)
    """
    bx, by, _ = _paired(x, y, dim, min_n=2)
    return pearson(rankdata(bx, dim=dim), rankdata(by, dim=dim), dim=dim)


def mean_difference(x: ArrayLike, y: ArrayLike, *, dim: int = -1) -> torch.Tensor:
    r"""Mean paired difference :math:`\frac{1}{n}\sum_i (x_i - y_i)` along ``dim``, batched.

    A vectorised statistic for :func:`paired_bootstrap_ci` and :func:`permutation_test`.

    Examples
    --------
    >>> mean_difference([3.0, 5.0], [1.0, 1.0])
    tensor(3., dtype=torch.float64)
    """
    bx, by, _ = _paired(x, y, dim, min_n=1)
    return (bx - by).mean(dim=dim)


# ----------------------------------------------------------------------------------------------------------
# partial correlation
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialCorrelation:
    """Result of :func:`partial_correlation`.

    Attributes
    ----------
    r
        Partial correlation coefficient in ``[-1, 1]``.
    n
        Number of observations.
    k
        Number of covariates.
    dof
        Degrees of freedom of the t test, ``n - 2 - k``.
    ci_low, ci_high
        Fisher-z confidence interval at level ``1 - alpha``.
    p_value
        Two-sided p-value of ``r = 0``.
    method
        ``"pearson"`` or ``"spearman"``.
    """

    r: float
    n: int
    k: int
    dof: int
    ci_low: float
    ci_high: float
    p_value: float
    method: str


def _residualise(v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Least-squares residual of ``v`` (n,) on the orthonormal columns ``q`` (n, k+1)."""
    return v - q @ (q.T @ v)


def partial_correlation(
    x: ArrayLike,
    y: ArrayLike,
    covariates: ArrayLike | None = None,
    *,
    method: Literal["pearson", "spearman"] = "pearson",
    alpha: float = 0.05,
) -> PartialCorrelation:
    r"""Partial correlation of ``x`` and ``y`` given ``k >= 0`` covariates, with p-value and CI.

    ``x`` and ``y`` are each regressed by least squares on the design :math:`[1, Z]` (intercept plus the
    ``k`` covariates) and the residuals are correlated:

    .. math::

        e_x = (I - P_{[1,Z]})\,x, \quad e_y = (I - P_{[1,Z]})\,y, \quad
        r = \frac{e_x^\top e_y}{\lVert e_x\rVert\,\lVert e_y\rVert}.

    With ``method="spearman"``, ``x``, ``y`` and every covariate column are first replaced by their
    average-tie ranks (as :func:`pingouin.partial_corr` does). With :math:`\nu = n - 2 - k`,

    .. math::

        t = r\sqrt{\frac{\nu}{1 - r^2}}, \qquad p = 2\,P(T_\nu > |t|), \qquad
        \mathrm{CI} = \tanh\!\Big(\operatorname{artanh}(r) \pm \frac{z_{1-\alpha/2}}{\sqrt{n - 3 - k}}\Big).

    These are exactly pingouin's formulas (``pingouin.partial_corr``; its CI is ``compute_esci`` with
    ``nx = n - k``, i.e. standard error :math:`1/\sqrt{n - k - 3}`, which pingouin displays rounded to two
    decimals). For :math:`|r| = 1`, :math:`p = 0` and the CI is ``[r, r]``. ``r`` is clipped to
    ``[-1, 1]`` against round-off only.

    Parameters
    ----------
    x, y
        Shape ``(n,)``.
    covariates
        ``None`` (plain correlation, ``k = 0``), shape ``(n,)`` (``k = 1``) or ``(n, k)``.
    method
        ``"pearson"`` or ``"spearman"``.
    alpha
        The CI has level ``1 - alpha``.

    Returns
    -------
    PartialCorrelation
        ``r, n, k, dof, ci_low, ci_high, p_value, method`` as Python numbers.

    Raises
    ------
    ValueError
        Before any work: non-finite values, mismatched lengths, ``n <= k + 3`` (too few observations
        for the test and the CI), a constant ``x``, ``y`` or covariate column, covariates that are
        linearly dependent together with the intercept. After residualising: ``x`` or ``y`` (numerically)
        a linear function of the covariates, so the residual is zero and ``r`` is undefined.
    TypeError
        For non-numeric input, or an ``alpha`` that is not a number.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(100, generator=g, dtype=torch.float64)
    >>> x = z + 0.5 * torch.randn(100, generator=g, dtype=torch.float64)
    >>> y = z + 0.5 * torch.randn(100, generator=g, dtype=torch.float64)
    >>> round(partial_correlation(x, y).r, 2) > 0.5  # confounded by z
    True
    >>> abs(partial_correlation(x, y, z).r) < 0.2  # after controlling for z
    True
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman'; got {method!r}")
    level = _check_open_unit(alpha, "alpha")
    tx = as_tensor(x, name="x", ndim=1)
    ty = as_tensor(y, name="y", ndim=1)
    n = tx.shape[0]
    if ty.shape[0] != n:
        raise ValueError(f"x and y must have the same length; got {n} and {ty.shape[0]}")
    if covariates is None:
        tz = torch.zeros((n, 0), dtype=torch.float64, device=tx.device)
    else:
        tz = as_tensor(covariates, name="covariates", ndim=(1, 2))
        if tz.ndim == 1:
            tz = tz[:, None]
        if tz.shape[0] != n:
            raise ValueError(f"covariates must have {n} rows (one per observation); got {tz.shape[0]}")
    k = tz.shape[1]
    if n <= k + 3:
        raise ValueError(
            f"partial correlation with k={k} covariate(s) needs n > k + 3 = {k + 3} observations "
            f"(dof = n - 2 - k for the test, n - 3 - k for the CI); got n={n}"
        )
    for name, col in (("x", tx), ("y", ty), *((f"covariate column {j}", tz[:, j]) for j in range(k))):
        if bool((col == col[0]).all()):
            raise ValueError(f"{name} is constant: the partial correlation is undefined")

    xv = tx.to(device=tx.device, dtype=torch.float64)
    yv = ty.to(device=tx.device, dtype=torch.float64)
    zv = tz.to(device=tx.device, dtype=torch.float64)
    if method == "spearman":
        xv, yv = rankdata(xv), rankdata(yv)
        zv = rankdata(zv, dim=0) if k > 0 else zv

    # Standardised covariates next to the intercept keep the design well conditioned.
    zs = (zv - zv.mean(dim=0, keepdim=True)) / zv.std(dim=0, keepdim=True) if k > 0 else zv
    design = torch.cat([torch.ones((n, 1), dtype=torch.float64, device=xv.device), zs], dim=1)
    q, rmat = torch.linalg.qr(design, mode="reduced")
    sv = torch.linalg.svdvals(rmat)
    if float(sv[-1]) <= 1e-10 * float(sv[0]):
        raise ValueError(
            f"covariates are linearly dependent (together with the intercept): the design [1, Z] has "
            f"numerical rank {int((sv > 1e-10 * sv[0]).sum())} < {k + 1}; drop redundant covariates"
        )
    ex = _residualise(xv, q)
    ey = _residualise(yv, q)
    for name, v, e in (("x", xv, ex), ("y", yv, ey)):
        centred = float(torch.linalg.vector_norm(v - v.mean()))
        if float(torch.linalg.vector_norm(e)) <= 1e-10 * centred:
            raise ValueError(
                f"{name} is (numerically) a linear function of the covariates: its residual is zero and the "
                "partial correlation is undefined"
            )
    r = float(torch.dot(ex, ey) / (torch.linalg.vector_norm(ex) * torch.linalg.vector_norm(ey)))
    r = min(1.0, max(-1.0, r))

    dof = n - 2 - k
    if abs(r) == 1.0:
        p_value, ci_low, ci_high = 0.0, r, r
    else:
        t_stat = r * math.sqrt(dof / (1.0 - r * r))
        from scipy.special import stdtr  # lazy: keeps `import shiftlab.functional` light

        p_value = float(2.0 * stdtr(dof, -abs(t_stat)))
        z = math.atanh(r)
        half = _normal_quantile(1.0 - level / 2.0) / math.sqrt(n - 3 - k)
        ci_low, ci_high = math.tanh(z - half), math.tanh(z + half)
    return PartialCorrelation(
        r=r, n=n, k=k, dof=dof, ci_low=ci_low, ci_high=ci_high, p_value=p_value, method=method
    )
