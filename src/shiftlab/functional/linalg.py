"""Linear algebra on tensors: covariance (with shrinkage), spectra, ranks, eigengaps and subspace angles.

Every public function validates its input (shape, finiteness, rank range) before doing any work and
raises a :class:`ValueError` or :class:`TypeError` that says what was wrong. Nothing is silently clamped:
where a result is clipped for floating-point round-off (cosines to ``[0, 1]``, a Ledoit-Wolf intensity to
``[0, 1]``), the docstring says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from shiftlab.functional._convert import ArrayLike, as_tensor

__all__ = [
    "Eigengap",
    "SymmetricSpectrum",
    "covariance",
    "effective_rank",
    "effective_rank_from_spectrum",
    "eigengap",
    "ledoit_wolf_shrinkage",
    "principal_angles",
    "stable_rank",
    "symmetric_spectrum",
]


# ----------------------------------------------------------------------------------------------------------
# small private helpers (shared with stats.py)
# ----------------------------------------------------------------------------------------------------------


def _check_int(value: object, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int after checking ``low <= value <= high`` (bool is rejected)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}; got {value}")
    return value


def _check_open_unit(value: object, name: str) -> float:
    """Return ``value`` as a float after checking ``0 < value < 1``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float in (0, 1); got {type(value).__name__}")
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1; got {value}")
    return v


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """Half-precision input is computed in float32; float32/float64 keep their dtype."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


# ----------------------------------------------------------------------------------------------------------
# covariance
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# spectra
# ----------------------------------------------------------------------------------------------------------


class SymmetricSpectrum(NamedTuple):
    """Eigen-decomposition of a symmetric matrix: ``matrix = vectors @ diag(values) @ vectors.T``."""

    eigenvalues: torch.Tensor
    """Shape ``(d,)``, sorted in non-increasing order."""
    eigenvectors: torch.Tensor
    """Shape ``(d, d)``; column ``i`` is the unit eigenvector of ``eigenvalues[i]``."""


def symmetric_spectrum(matrix: ArrayLike, *, rtol: float | None = None) -> SymmetricSpectrum:
    r"""Eigenvalues (descending) and eigenvectors (columns) of a real symmetric matrix.

    .. math::

        A = V \operatorname{diag}(\lambda) V^\top, \qquad \lambda_1 \ge \lambda_2 \ge \dots \ge \lambda_d.

    ``A`` must be square and symmetric to within ``rtol``:
    :math:`\max_{ij}|A_{ij} - A_{ji}| \le \mathrm{rtol} \cdot \max_{ij}|A_{ij}|`. The decomposition is
    computed in float64 on :math:`(A + A^\top)/2` (which differs from ``A`` only by that tolerated
    round-off) with :func:`torch.linalg.eigh`, then cast back to the input dtype. Eigenvectors get a
    deterministic sign: the entry of largest magnitude in each column is positive.

    Parameters
    ----------
    matrix
        Square symmetric matrix of shape ``(d, d)``.
    rtol
        Relative symmetry tolerance. Default: :math:`\sqrt{\varepsilon}` of the input dtype
        (about ``3.5e-4`` for float32, ``1.5e-8`` for float64).

    Returns
    -------
    SymmetricSpectrum
        ``(eigenvalues, eigenvectors)`` of shapes ``(d,)`` and ``(d, d)`` in the input's dtype.

    Raises
    ------
    ValueError
        If the matrix is not square, not symmetric within ``rtol``, empty or non-finite.

    Examples
    --------
    >>> import torch
    >>> values, vectors = symmetric_spectrum(torch.tensor([[2.0, 1.0], [1.0, 2.0]]))
    >>> values
    tensor([3., 1.])
    >>> torch.allclose(vectors @ torch.diag(values) @ vectors.T, torch.tensor([[2.0, 1.0], [1.0, 2.0]]))
    True
    """
    a = as_tensor(matrix, name="matrix", ndim=2)
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"matrix must be square; got shape {tuple(a.shape)}")
    if a.shape[0] == 0:
        raise ValueError("matrix must not be empty")
    tol = math.sqrt(_eps(a.dtype)) if rtol is None else float(rtol)
    if not tol >= 0.0:
        raise ValueError(f"rtol must be >= 0; got {rtol}")
    a64 = a.to(torch.float64)
    scale = float(a64.abs().max())
    asym = float((a64 - a64.T).abs().max())
    if asym > tol * scale:
        raise ValueError(
            f"matrix must be symmetric: max |A - A^T| = {asym:.3g} exceeds rtol * max |A| = "
            f"{tol * scale:.3g}; symmetrize it ((A + A.T) / 2) if the asymmetry is round-off, "
            "or pass a larger rtol"
        )
    values, vectors = torch.linalg.eigh(0.5 * (a64 + a64.T))
    values = values.flip(0)
    vectors = vectors.flip(1)
    pivot = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors.gather(0, pivot[None, :]))
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    return SymmetricSpectrum(values.to(a.dtype), vectors.to(a.dtype))


def _entropy_rank(p_unnormalised: torch.Tensor) -> torch.Tensor:
    """exp(Shannon entropy) of the last-dim distribution p = v / sum(v), with 0 log 0 = 0."""
    p = p_unnormalised / p_unnormalised.sum(dim=-1, keepdim=True)
    positive = p > 0
    safe = torch.where(positive, p, torch.ones_like(p))
    plogp = torch.where(positive, p * torch.log(safe), torch.zeros_like(p))
    return torch.exp(-plogp.sum(dim=-1))


def effective_rank(matrix: ArrayLike) -> torch.Tensor:
    r"""Effective rank of a matrix from its singular values (Roy & Vetterli 2007).

    With singular values :math:`\sigma_1, \dots, \sigma_m` (:math:`m = \min(r, c)`),

    .. math::

        p_i = \frac{\sigma_i}{\sum_j \sigma_j}, \qquad
        \operatorname{erank}(A) = \exp\Big(-\sum_i p_i \log p_i\Big), \qquad 0 \log 0 = 0.

    It lies in :math:`[1, \operatorname{rank}(A)] \subseteq [1, m]`, equals ``k`` for ``k`` equal nonzero
    singular values, and is invariant to scaling ``A``. For a symmetric positive semi-definite matrix the
    singular values are the eigenvalues, so ``effective_rank(cov)`` equals
    ``effective_rank_from_spectrum(eigenvalues of cov)``. Note that the effective rank of a data matrix
    ``X`` (singular values) differs from that of its covariance (squared singular values): pick the one
    your definition needs. Differentiable where the singular values are distinct.

    Parameters
    ----------
    matrix
        A matrix of shape ``(r, c)`` or a batch of shape ``(..., r, c)``.

    Returns
    -------
    torch.Tensor
        Effective rank, shape ``()`` or the batch shape ``(...)``, in the input's floating dtype.

    Raises
    ------
    ValueError
        If any matrix is all zeros (its spectrum cannot be normalised), empty or non-finite.

    See Also
    --------
    effective_rank_from_spectrum : the same from given nonnegative values (e.g. eigenvalues).

    Examples
    --------
    >>> import torch
    >>> round(float(effective_rank(torch.eye(4))), 6)
    4.0
    >>> round(float(effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0])))), 6)
    2.0
    """
    a = as_tensor(matrix, name="matrix")
    if a.ndim < 2:
        raise ValueError(
            f"matrix must have at least 2 dimensions; got shape {tuple(a.shape)} "
            "(for a vector of eigen- or singular values use effective_rank_from_spectrum)"
        )
    if a.numel() == 0:
        raise ValueError(f"matrix must not be empty; got shape {tuple(a.shape)}")
    zero = (a == 0).flatten(-2).all(dim=-1)
    if bool(zero.any()):
        raise ValueError(
            f"effective rank is undefined for an all-zero matrix ({int(zero.sum())} of them in the batch)"
        )
    s = torch.linalg.svdvals(a.to(_compute_dtype(a)))
    return _entropy_rank(s).to(a.dtype)


def effective_rank_from_spectrum(values: ArrayLike) -> torch.Tensor:
    r"""Effective rank from a nonnegative spectrum: :math:`\exp(-\sum_i p_i \log p_i)`, :math:`p = v/\sum v`.

    This is the Roy & Vetterli (2007) effective rank when ``values`` are singular values, or the
    eigenvalues of a positive semi-definite matrix. Order does not matter. Negative values that are
    round-off, :math:`|v_i| \le 10\,k\,\varepsilon \max_j v_j` with ``k`` the number of values (as
    :func:`torch.linalg.eigvalsh` returns for rank-deficient covariances), count as zero; any more negative
    value raises.

    Parameters
    ----------
    values
        Nonnegative values of shape ``(k,)``, or ``(..., k)`` for a batch of spectra.

    Returns
    -------
    torch.Tensor
        Effective rank in ``[1, k]``, shape ``()`` or ``(...)``.

    Raises
    ------
    ValueError
        If a value is negative beyond round-off, all values are zero, or the input is empty/non-finite.

    Examples
    --------
    >>> import torch
    >>> round(float(effective_rank_from_spectrum(torch.tensor([3.0, 3.0, 3.0, 0.0]))), 6)
    3.0
    """
    v = as_tensor(values, name="values")
    if v.ndim < 1 or v.shape[-1] == 0:
        raise ValueError(
            f"values must be a non-empty vector (or batch of vectors); got shape {tuple(v.shape)}"
        )
    work = v.to(_compute_dtype(v))
    k = work.shape[-1]
    vmax = work.max(dim=-1, keepdim=True).values
    tol = 10 * k * _eps(work.dtype) * vmax.clamp(min=0)
    if bool((work < -tol).any()):
        raise ValueError(
            f"values must be nonnegative; got minimum {float(work.min()):.3g} "
            "(pass singular values, or eigenvalues of a positive semi-definite matrix)"
        )
    if bool((vmax <= 0).any()):
        raise ValueError("effective rank is undefined for an all-zero spectrum")
    return _entropy_rank(torch.where(work < 0, torch.zeros_like(work), work)).to(v.dtype)


def stable_rank(matrix: ArrayLike) -> torch.Tensor:
    r"""Stable rank :math:`\lVert A\rVert_F^2 / \lVert A\rVert_2^2 = \sum_i \sigma_i^2 / \sigma_1^2`.

    It lies in :math:`[1, \operatorname{rank}(A)]`, is invariant to scaling, and, unlike the rank, is
    continuous in ``A``. Differentiable where :math:`\sigma_1` is simple.

    Parameters
    ----------
    matrix
        Shape ``(r, c)`` or a batch ``(..., r, c)``.

    Returns
    -------
    torch.Tensor
        Shape ``()`` or the batch shape, in the input's floating dtype.

    Raises
    ------
    ValueError
        If any matrix is all zeros, empty, or non-finite.

    Examples
    --------
    >>> import torch
    >>> stable_rank(torch.diag(torch.tensor([2.0, 1.0, 1.0])))
    tensor(1.5000)
    """
    a = as_tensor(matrix, name="matrix")
    if a.ndim < 2:
        raise ValueError(f"matrix must have at least 2 dimensions; got shape {tuple(a.shape)}")
    if a.numel() == 0:
        raise ValueError(f"matrix must not be empty; got shape {tuple(a.shape)}")
    zero = (a == 0).flatten(-2).all(dim=-1)
    if bool(zero.any()):
        raise ValueError(
            f"stable rank is undefined for an all-zero matrix ({int(zero.sum())} of them in the batch)"
        )
    w = a.to(_compute_dtype(a))
    s = torch.linalg.svdvals(w)
    fro2 = (w * w).sum(dim=(-2, -1))
    return (fro2 / s[..., 0] ** 2).to(a.dtype)


@dataclass(frozen=True)
class Eigengap:
    r"""Gap after the ``rank``-th eigenvalue of a non-increasing spectrum.

    ``absolute`` :math:`= \lambda_k - \lambda_{k+1}` and ``relative``
    :math:`= (\lambda_k - \lambda_{k+1}) / |\lambda_k|` with ``k = rank`` (1-based).
    """

    rank: int
    absolute: float
    relative: float


def eigengap(spectrum: ArrayLike, rank: int) -> Eigengap:
    r"""Gap between the ``rank``-th and the next eigenvalue of an *untruncated* spectrum.

    With :math:`\lambda_1 \ge \dots \ge \lambda_m` and :math:`k` = ``rank`` (1-based),

    .. math::

        \text{absolute} = \lambda_k - \lambda_{k+1}, \qquad
        \text{relative} = \frac{\lambda_k - \lambda_{k+1}}{|\lambda_k|}.

    A large relative gap says the top-``k`` eigenspace is well separated (Davis-Kahan: its estimate is
    stable under perturbations small against the gap). ``rank`` must satisfy ``1 <= rank < m``: the value
    after the ``k``-th must exist, so passing a spectrum that was already truncated to ``k`` values is an
    error, not a silent pass.

    Parameters
    ----------
    spectrum
        The full spectrum, shape ``(m,)``, sorted in non-increasing order (as
        :func:`symmetric_spectrum` returns it).
    rank
        The candidate rank ``k``.

    Returns
    -------
    Eigengap
        ``rank``, ``absolute`` and ``relative`` gaps as Python numbers.

    Raises
    ------
    ValueError
        If ``rank`` is outside ``[1, m - 1]``, the spectrum is not sorted non-increasingly, or
        :math:`\lambda_k = 0` (then the relative gap is undefined and the spectrum has fewer than ``k``
        nonzero values: choose a smaller rank).
    TypeError
        If ``rank`` is not an int.

    Examples
    --------
    >>> eigengap([5.0, 4.0, 1.0, 0.5], rank=2)
    Eigengap(rank=2, absolute=3.0, relative=0.75)
    """
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int; got {type(rank).__name__}")
    s = as_tensor(spectrum, name="spectrum", ndim=1)
    m = s.shape[0]
    if m < 2:
        raise ValueError(f"spectrum needs at least 2 values to have a gap; got {m}")
    if not 1 <= rank < m:
        raise ValueError(
            f"rank must satisfy 1 <= rank < len(spectrum) = {m}; got {rank}. The gap after rank k needs "
            "the (k+1)-th eigenvalue: pass the untruncated spectrum"
        )
    s64 = s.to(torch.float64)
    increases = torch.nonzero(s64[1:] > s64[:-1])
    if increases.numel() > 0:
        i = int(increases[0, 0])
        raise ValueError(
            f"spectrum must be sorted in non-increasing order; value {i + 1} ({float(s64[i + 1]):.6g}) "
            f"exceeds value {i} ({float(s64[i]):.6g})"
        )
    lk = float(s64[rank - 1])
    lk1 = float(s64[rank])
    if lk == 0.0:
        raise ValueError(
            f"the {rank}-th eigenvalue is 0, so the relative gap is undefined: the spectrum has fewer than "
            f"{rank} nonzero values; choose a smaller rank"
        )
    gap = lk - lk1
    return Eigengap(rank=rank, absolute=gap, relative=gap / abs(lk))


# ----------------------------------------------------------------------------------------------------------
# subspaces
# ----------------------------------------------------------------------------------------------------------


def _orthonormal_basis(a: torch.Tensor, name: str) -> torch.Tensor:
    q, r = torch.linalg.qr(a, mode="reduced")
    s = torch.linalg.svdvals(r)  # same singular values as a, on a small (p, p) matrix
    tol = max(a.shape) * _eps(torch.float64) * float(s[0])
    if float(s[-1]) <= tol:
        raise ValueError(
            f"{name} must have linearly independent columns; its numerical rank is "
            f"{int((s > tol).sum())} < {a.shape[1]} columns (drop or orthogonalise redundant columns)"
        )
    return q


def principal_angles(a: ArrayLike, b: ArrayLike) -> torch.Tensor:
    r"""Principal angles between the column spaces of ``a`` and ``b``, in radians, ascending.

    With orthonormal bases :math:`Q_a, Q_b` (reduced QR) and :math:`m = \min(p, q)`,

    .. math::

        \cos\theta_i = \sigma_i(Q_a^\top Q_b), \qquad
        \sin\theta_i = \sigma_{m+1-i}\big((I - Q_a Q_a^\top) Q_b\big) \ (p \ge q),

    :math:`0 \le \theta_1 \le \dots \le \theta_m \le \pi/2` (Björck & Golub 1973). Following Knyazev &
    Argentati (2002) and :func:`scipy.linalg.subspace_angles`, angles below 45° are taken from the sines
    and the rest from the cosines, so that tiny angles are accurate (``arccos`` of a cosine near 1 loses
    half the digits: a subspace against itself gives ~1e-8 instead of ~1e-16). Cosines and sines are
    clipped to ``[0, 1]`` against round-off only. Computed in float64, returned in the input dtype.
    (scipy returns the same angles in *descending* order.)

    Parameters
    ----------
    a
        Shape ``(n, p)`` with linearly independent columns, ``p <= n``.
    b
        Shape ``(n, q)`` with linearly independent columns, ``q <= n``.

    Returns
    -------
    torch.Tensor
        Shape ``(min(p, q),)``.

    Raises
    ------
    ValueError
        If the row counts differ, a matrix has more columns than rows, or its columns are linearly
        dependent (numerical rank below the column count).

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> principal_angles(a, b)
    tensor([0.0000, 0.7854])
    """
    ta = as_tensor(a, name="a", ndim=2)
    tb = as_tensor(b, name="b", ndim=2)
    if ta.shape[0] != tb.shape[0]:
        raise ValueError(f"a and b must have the same number of rows; got {ta.shape[0]} and {tb.shape[0]}")
    for name, t in (("a", ta), ("b", tb)):
        if t.shape[1] == 0:
            raise ValueError(f"{name} must have at least one column; got shape {tuple(t.shape)}")
        if t.shape[1] > t.shape[0]:
            raise ValueError(
                f"{name} has more columns than rows ({tuple(t.shape)}): its columns cannot be independent"
            )
    out_dtype = torch.promote_types(ta.dtype, tb.dtype)
    qa = _orthonormal_basis(ta.to(torch.float64), "a")
    qb = _orthonormal_basis(tb.to(torch.float64), "b")
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa  # the angles are symmetric in (a, b); project the smaller basis
    cross = qa.T @ qb
    cosines = torch.linalg.svdvals(cross).clamp(0.0, 1.0)  # descending cosines = ascending angles
    residual = qb - qa @ cross
    sines = torch.linalg.svdvals(residual).clamp(0.0, 1.0).flip(0)  # ascending sines = ascending angles
    small = cosines**2 >= 0.5
    angles = torch.where(small, torch.arcsin(sines), torch.arccos(cosines))
    return angles.to(out_dtype)
