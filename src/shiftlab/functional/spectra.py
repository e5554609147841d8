"""Spectra of matrices: symmetric eigen-decomposition, effective and stable rank, eigengaps.

Every public function validates its input (shape, finiteness, rank range) before doing any work and
raises a :class:`ValueError` or :class:`TypeError` that says what was wrong. Nothing is silently clamped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from shiftlab.functional._checks import _compute_dtype, _eps
from shiftlab.functional._convert import ArrayLike, as_tensor

__all__ = [
    "Eigengap",
    "SymmetricSpectrum",
    "effective_rank",
    "effective_rank_from_spectrum",
    "eigengap",
    "stable_rank",
    "symmetric_spectrum",
]


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
