"""Statistics on tensors: ranks, correlations, partial correlation, bootstrap, permutation tests, FDR.

All resampling is vectorised: resampled data reach the user's statistic as one batched tensor with a
leading resample dimension, and randomness comes only from an explicit ``seed`` (or a
:class:`torch.Generator`), drawn on the CPU so that the same seed gives the same result on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.linalg import _check_int, _check_open_unit

__all__ = [
    "BenjaminiHochberg",
    "BootstrapResult",
    "PartialCorrelation",
    "PermutationTestResult",
    "benjamini_hochberg",
    "mean_difference",
    "paired_bootstrap_ci",
    "partial_correlation",
    "pearson",
    "permutation_test",
    "rankdata",
    "spearman",
]

Alternative = Literal["two-sided", "greater", "less"]


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


# ----------------------------------------------------------------------------------------------------------
# resampling
# ----------------------------------------------------------------------------------------------------------


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(
                f"seed generator must live on the CPU (draws are device-independent); got {seed.device}"
            )
        return seed
    seed = _check_int(seed, "seed", low=0)
    return torch.Generator(device="cpu").manual_seed(seed)


def _call_statistic(statistic: Callable[..., torch.Tensor], batch: int, *args: torch.Tensor) -> torch.Tensor:
    out = statistic(*args)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"statistic must return a torch.Tensor; got {type(out).__name__}")
    if out.ndim == 0 or out.shape[0] != batch:
        raise ValueError(
            f"statistic must return one value per resample, shape ({batch}, ...); got {tuple(out.shape)}. "
            "It receives batched tensors with a leading resample dimension and must reduce over dim 1"
        )
    return out


def _batched(
    statistic: Callable[..., torch.Tensor],
    samples: tuple[torch.Tensor, ...],
    indices: torch.Tensor,
    batch_size: int | None,
) -> torch.Tensor:
    """Evaluate ``statistic`` on ``sample[indices]`` for every sample, in chunks of rows of ``indices``."""
    total = indices.shape[0]
    step = total if batch_size is None else batch_size
    parts = []
    for start in range(0, total, step):
        idx = indices[start : start + step]
        parts.append(_call_statistic(statistic, idx.shape[0], *(s[idx] for s in samples)))
    return torch.cat(parts, dim=0)


def _quantile_columns(sorted_dist: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Linear-interpolation quantile (numpy's default) of each column at its own level ``q``."""
    b = sorted_dist.shape[0]
    pos = q.clamp(0.0, 1.0) * (b - 1)
    lo = pos.floor().long().clamp(0, b - 1)
    hi = pos.ceil().long().clamp(0, b - 1)
    frac = (pos - lo.to(pos.dtype)).to(sorted_dist.dtype)
    vlo = sorted_dist.gather(0, lo[None]).squeeze(0)
    vhi = sorted_dist.gather(0, hi[None]).squeeze(0)
    return vlo + frac * (vhi - vlo)


@dataclass(frozen=True)
class BootstrapResult:
    """Result of :func:`paired_bootstrap_ci`.

    Attributes
    ----------
    estimate
        The statistic on the original data, shape ``stat_shape`` (``()`` for a scalar statistic).
    ci_low, ci_high
        Confidence bounds at level ``1 - alpha``, shape ``stat_shape``.
    distribution
        The bootstrap distribution, shape ``(n_boot, *stat_shape)``.
    method
        ``"percentile"`` or ``"bca"``.
    alpha
        One minus the confidence level.
    """

    estimate: torch.Tensor
    ci_low: torch.Tensor
    ci_high: torch.Tensor
    distribution: torch.Tensor
    method: str
    alpha: float


def paired_bootstrap_ci(
    statistic: Callable[..., torch.Tensor],
    *samples: ArrayLike,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int | torch.Generator = 0,
    method: Literal["percentile", "bca"] = "percentile",
    batch_size: int | None = None,
) -> BootstrapResult:
    r"""Paired, vectorised bootstrap confidence interval of a statistic of one or more paired samples.

    One index matrix :math:`I \in \{0..n-1\}^{B \times n}` is drawn uniformly with replacement (from a
    CPU :class:`torch.Generator` seeded with ``seed``) and used for *every* sample, so pairs stay paired:
    resample ``b`` of sample ``s`` is ``s[I[b]]``. ``statistic(*batched)`` receives tensors of shape
    ``(B, n, ...)`` and must return shape ``(B, ...)`` (e.g. :func:`pearson`, :func:`spearman`,
    :func:`mean_difference` for 1-D samples). With bootstrap replicates :math:`\hat\theta^*_b`:

    - ``"percentile"``: :math:`[q_{\alpha/2}, q_{1-\alpha/2}]` of the replicates (linear interpolation,
      as :func:`numpy.quantile`).
    - ``"bca"``: bias-corrected and accelerated (Efron & Tibshirani 1993, eq. 14.10, 14.15), as
      :func:`scipy.stats.bootstrap`: :math:`z_0 = \Phi^{-1}(\hat F(\hat\theta))` with
      :math:`\hat F(\hat\theta) = (\#\{\hat\theta^* < \hat\theta\} + \#\{\hat\theta^* \le \hat\theta\})/(2B)`,
      acceleration from the leave-one-pair-out jackknife :math:`\hat\theta_{(i)}`,
      :math:`U_i = \bar\theta - \hat\theta_{(i)}`, :math:`a = \sum U_i^3 / (6 (\sum U_i^2)^{3/2})`
      (0 if all :math:`U_i = 0`), and levels :math:`\Phi\big(z_0 + \frac{z_0 + z_c}{1 - a(z_0 + z_c)}\big)`
      for :math:`z_c = \Phi^{-1}(\alpha/2)` and :math:`\Phi^{-1}(1 - \alpha/2)`.

    The same ``seed`` gives identical results; ``batch_size`` only changes memory use, not the result.

    Parameters
    ----------
    statistic
        Vectorised statistic: ``(B, n, ...)`` tensors in, ``(B, ...)`` out.
    *samples
        One or more arrays with the same first dimension ``n >= 2``.
    n_boot
        Number of resamples ``B``; at least ``2 / alpha`` so each tail holds a resample.
    alpha
        One minus the confidence level.
    seed
        An int, or a CPU :class:`torch.Generator` (then its state advances).
    method
        ``"percentile"`` or ``"bca"``.
    batch_size
        Evaluate the statistic on at most this many resamples at a time (default: all at once).

    Returns
    -------
    BootstrapResult

    Raises
    ------
    ValueError
        Bad samples (non-finite, length mismatch, ``n < 2``), ``n_boot`` too small, a statistic output of
        the wrong shape or with non-finite values, or (BCa) an estimate outside the bootstrap
        distribution (then :math:`z_0 = \pm\infty`: use ``"percentile"``).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(1)
    >>> x = torch.randn(40, generator=g, dtype=torch.float64)
    >>> y = x + 0.5 + 0.1 * torch.randn(40, generator=g, dtype=torch.float64)
    >>> res = paired_bootstrap_ci(mean_difference, y, x, n_boot=1000, seed=0)
    >>> bool(res.ci_low < 0.5 < res.ci_high), tuple(res.distribution.shape)
    (True, (1000,))
    """
    if method not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'bca'; got {method!r}")
    if not callable(statistic):
        raise TypeError(f"statistic must be callable; got {type(statistic).__name__}")
    level = _check_open_unit(alpha, "alpha")
    n_boot = _check_int(n_boot, "n_boot", low=1)
    if n_boot * level / 2 < 1:
        raise ValueError(
            f"n_boot={n_boot} is too small for alpha={alpha}: each tail must hold at least one resample "
            f"(n_boot >= {math.ceil(2 / level)})"
        )
    if batch_size is not None:
        batch_size = _check_int(batch_size, "batch_size", low=1)
    if not samples:
        raise ValueError("paired_bootstrap_ci needs at least one sample")
    tensors = tuple(as_tensor(s, name=f"samples[{i}]", min_rows=2) for i, s in enumerate(samples))
    n = tensors[0].shape[0]
    for i, t in enumerate(tensors[1:], start=1):
        if t.shape[0] != n:
            raise ValueError(
                f"paired samples must have the same length; samples[0] has {n}, samples[{i}] has {t.shape[0]}"
            )
    gen = _generator(seed)

    estimate = _call_statistic(statistic, 1, *(t[None] for t in tensors))[0]
    indices = torch.randint(0, n, (n_boot, n), generator=gen).to(tensors[0].device)
    dist = _batched(statistic, tensors, indices, batch_size)
    if bool((~torch.isfinite(dist)).any()) or not bool(torch.isfinite(estimate).all()):
        raise ValueError("statistic returned non-finite values on the data or on some resamples")

    sorted_dist = torch.sort(dist, dim=0).values
    work = torch.float64
    lo_level = torch.full(estimate.shape, level / 2, dtype=work, device=dist.device)
    hi_level = torch.full(estimate.shape, 1 - level / 2, dtype=work, device=dist.device)
    if method == "bca":
        below = (dist < estimate).sum(dim=0) + (dist <= estimate).sum(dim=0)
        frac = below.to(work) / (2 * n_boot)
        if bool(((frac == 0) | (frac == 1)).any()):
            raise ValueError(
                "BCa is undefined: the estimate lies outside the bootstrap distribution (z0 = ±inf); "
                "use method='percentile'"
            )
        z0 = torch.special.ndtri(frac)
        keep = ~torch.eye(n, dtype=torch.bool, device=indices.device)
        jack_idx = torch.arange(n, device=indices.device).expand(n, n)[keep].reshape(n, n - 1)
        jack = _batched(statistic, tensors, jack_idx, batch_size).to(work)
        if not bool(torch.isfinite(jack).all()):
            raise ValueError("statistic returned non-finite values on some jackknife (leave-one-out) samples")
        u = jack.mean(dim=0, keepdim=True) - jack
        num = (u**3).sum(dim=0)
        den = 6 * (u**2).sum(dim=0) ** 1.5
        accel = torch.where(
            den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den)
        )
        z_lo = _normal_quantile(level / 2)
        z_hi = -z_lo
        lo_level = torch.special.ndtr(z0 + (z0 + z_lo) / (1 - accel * (z0 + z_lo)))
        hi_level = torch.special.ndtr(z0 + (z0 + z_hi) / (1 - accel * (z0 + z_hi)))
    ci_low = _quantile_columns(sorted_dist, lo_level)
    ci_high = _quantile_columns(sorted_dist, hi_level)
    return BootstrapResult(
        estimate=estimate, ci_low=ci_low, ci_high=ci_high, distribution=dist, method=method, alpha=level
    )


def _block_permutation_indices(
    n: int, n_permutations: int, block_size: int, gen: torch.Generator
) -> torch.Tensor:
    """(B, n) indices that permute contiguous blocks of length ``block_size``; the last block is shorter
    when ``block_size`` does not divide ``n`` and is permuted like any other block."""
    n_blocks = -(-n // block_size)
    order = torch.argsort(torch.rand(n_permutations, n_blocks, generator=gen), dim=1)
    if block_size == 1:
        return order
    starts = torch.arange(n_blocks) * block_size
    lengths = torch.clamp(n - starts, max=block_size)
    out_lengths = lengths[order]  # (B, n_blocks)
    out_starts = torch.cumsum(out_lengths, dim=1) - out_lengths
    pos = torch.arange(n).expand(n_permutations, n).contiguous()
    which = torch.searchsorted(out_starts, pos, right=True) - 1  # output block of each position
    offset = pos - out_starts.gather(1, which)
    return starts[order.gather(1, which)] + offset


@dataclass(frozen=True)
class PermutationTestResult:
    """Result of :func:`permutation_test`.

    Attributes
    ----------
    statistic
        The observed statistic :math:`T_{obs}`.
    p_value
        :math:`(1 + \\#\\{\\text{as extreme}\\}) / (1 + B)`.
    null_distribution
        The ``B`` permuted statistics, shape ``(B,)``.
    alternative
        ``"two-sided"``, ``"greater"`` or ``"less"``.
    block_size
        Block length used (1 for a plain permutation).
    """

    statistic: float
    p_value: float
    null_distribution: torch.Tensor
    alternative: str
    block_size: int


def permutation_test(
    statistic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_permutations: int = 9999,
    seed: int | torch.Generator = 0,
    block_size: int | None = None,
    alternative: Alternative = "two-sided",
) -> PermutationTestResult:
    r"""Permutation test of association between paired series ``x`` and ``y`` (vectorised, seeded).

    ``y`` is permuted relative to ``x`` ``B`` times; ``statistic(x_b, y_b)`` receives ``x`` expanded to
    ``(B, n, ...)`` and the permuted ``y`` of shape ``(B, n, ...)`` and must return ``(B,)``. The
    p-value counts the observed arrangement as one of the permutations:

    .. math::

        p_{\text{two-sided}} = \frac{1 + \#\{b: |T_b| \ge |T_{obs}|\}}{1 + B}, \quad
        p_{\text{greater}} = \frac{1 + \#\{b: T_b \ge T_{obs}\}}{1 + B}, \quad
        p_{\text{less}} = \frac{1 + \#\{b: T_b \le T_{obs}\}}{1 + B},

    with comparisons relaxed by :math:`100\,\varepsilon\,|T_{obs}|` so that permutations whose statistic
    equals the observed one up to round-off count as ties (as :func:`scipy.stats.permutation_test`). The
    two-sided form assumes a null distribution symmetric about 0 (correlations, mean differences).

    For autocorrelated series a plain permutation destroys the serial dependence and its null is too
    narrow (false positives). With ``block_size = L``, ``y`` is cut into contiguous blocks of length ``L``
    (the last one shorter when ``L`` does not divide ``n``) and the blocks are permuted, keeping the
    dependence within blocks. ``block_size`` must leave at least 2 blocks; with few blocks only
    ``n_blocks!`` distinct arrangements exist, which bounds the attainable p-value.

    Parameters
    ----------
    statistic
        Vectorised statistic, e.g. :func:`pearson` or :func:`spearman` for 1-D series.
    x, y
        Arrays with the same first dimension ``n >= 2``.
    n_permutations
        Number of random permutations ``B``.
    seed
        An int, or a CPU :class:`torch.Generator` (then its state advances).
    block_size
        ``None`` (plain permutation, same as 1) or the block length.
    alternative
        ``"two-sided"``, ``"greater"`` or ``"less"``.

    Returns
    -------
    PermutationTestResult

    Raises
    ------
    ValueError
        Bad input, ``block_size`` leaving fewer than 2 blocks, a statistic of the wrong shape or with
        non-finite values.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(50, generator=g, dtype=torch.float64)
    >>> y = x + torch.randn(50, generator=g, dtype=torch.float64)
    >>> res = permutation_test(pearson, x, y, n_permutations=999, seed=0)
    >>> res.p_value  # no permutation beats the observed correlation
    0.001
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less'; got {alternative!r}")
    if not callable(statistic):
        raise TypeError(f"statistic must be callable; got {type(statistic).__name__}")
    n_permutations = _check_int(n_permutations, "n_permutations", low=1)
    tx = as_tensor(x, name="x", min_rows=2)
    ty = as_tensor(y, name="y", min_rows=2)
    n = tx.shape[0]
    if ty.shape[0] != n:
        raise ValueError(f"x and y must have the same length; got {n} and {ty.shape[0]}")
    size = 1 if block_size is None else _check_int(block_size, "block_size", low=1)
    if -(-n // size) < 2:
        raise ValueError(
            f"block_size={size} leaves fewer than 2 blocks for n={n}; use block_size <= {n // 2}"
        )
    gen = _generator(seed)

    observed_t = _call_statistic(statistic, 1, tx[None], ty[None])
    if observed_t.shape != (1,):
        raise ValueError(f"statistic must return shape (batch,); got {tuple(observed_t.shape)} for batch 1")
    indices = _block_permutation_indices(n, n_permutations, size, gen).to(ty.device)
    x_b = tx[None].expand(n_permutations, *tx.shape)
    null = _call_statistic(statistic, n_permutations, x_b, ty[indices])
    if null.shape != (n_permutations,):
        raise ValueError(f"statistic must return shape ({n_permutations},); got {tuple(null.shape)}")
    if not bool(torch.isfinite(null).all()) or not bool(torch.isfinite(observed_t).all()):
        raise ValueError("statistic returned non-finite values on the data or on some permutations")

    observed = float(observed_t[0])
    null64 = null.detach().to(torch.float64)
    gamma = abs(observed) * 100 * float(torch.finfo(null.dtype).eps)
    if alternative == "two-sided":
        count = int((null64.abs() >= abs(observed) - gamma).sum())
    elif alternative == "greater":
        count = int((null64 >= observed - gamma).sum())
    else:
        count = int((null64 <= observed + gamma).sum())
    p_value = (1 + count) / (1 + n_permutations)
    return PermutationTestResult(
        statistic=observed, p_value=p_value, null_distribution=null, alternative=alternative, block_size=size
    )


# ----------------------------------------------------------------------------------------------------------
# multiple testing
# ----------------------------------------------------------------------------------------------------------


class BenjaminiHochberg(NamedTuple):
    """Result of :func:`benjamini_hochberg`: unpack as ``adjusted, reject = benjamini_hochberg(p)``."""

    adjusted: torch.Tensor
    """BH-adjusted p-values (q-values), same shape and order as the input."""
    reject: torch.Tensor
    """Boolean mask: hypotheses rejected at false discovery rate ``alpha``."""


def benjamini_hochberg(p_values: ArrayLike, alpha: float = 0.05) -> BenjaminiHochberg:
    r"""Benjamini-Hochberg step-up FDR control: adjusted p-values and the rejection mask.

    With the :math:`m` p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`,

    .. math:: \tilde p_{(i)} = \min\Big(1, \min_{j \ge i} \frac{m\, p_{(j)}}{j}\Big),

    mapped back to the input order. The rejections follow the step-up rule: reject the ``k`` smallest,
    :math:`k = \max\{i: p_{(i)} \le (i/m)\,\alpha\}` (Benjamini & Hochberg 1995), which is
    :math:`\tilde p_i \le \alpha` up to the rounding of a p-value lying exactly on a threshold. The
    adjusted values match :func:`scipy.stats.false_discovery_control` with ``method="bh"``; the
    rejections match ``statsmodels.stats.multitest.multipletests(method="fdr_bh")``.

    Parameters
    ----------
    p_values
        Shape ``(m,)``, values in ``[0, 1]``, ``m >= 1``.
    alpha
        Target false discovery rate.

    Returns
    -------
    BenjaminiHochberg
        ``(adjusted, reject)``, both shape ``(m,)``; ``adjusted`` in the input's floating dtype.

    Examples
    --------
    >>> adjusted, reject = benjamini_hochberg([0.01, 0.04, 0.03, 0.5], alpha=0.05)
    >>> adjusted
    tensor([0.0400, 0.0533, 0.0533, 0.5000], dtype=torch.float64)
    >>> reject
    tensor([ True, False, False, False])
    """
    level = _check_open_unit(alpha, "alpha")
    p = as_tensor(p_values, name="p_values", ndim=1, min_rows=1)
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError(
            f"p_values must lie in [0, 1]; got min {float(p.min()):.3g}, max {float(p.max()):.3g}"
        )
    m = p.shape[0]
    work = p.to(torch.float64)
    order = torch.argsort(work)
    ranks = torch.arange(1, m + 1, dtype=torch.float64, device=p.device)
    scaled = work[order] * m / ranks
    stepped = torch.flip(torch.cummin(torch.flip(scaled, (0,)), dim=0).values, (0,)).clamp(max=1.0)
    adjusted = torch.empty_like(stepped)
    adjusted[order] = stepped
    # The rejection uses the step-up rule on the raw p-values, so that it does not depend on the
    # rounding of m p / i (it can differ from `adjusted <= alpha` only for p exactly at a threshold).
    passing = torch.nonzero(work[order] <= ranks / m * level)
    n_reject = 0 if passing.numel() == 0 else int(passing[-1, 0]) + 1
    reject = torch.zeros(m, dtype=torch.bool, device=p.device)
    reject[order[:n_reject]] = True
    return BenjaminiHochberg(adjusted=adjusted.to(p.dtype), reject=reject)
