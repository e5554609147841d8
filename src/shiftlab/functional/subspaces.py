"""Subspace geometry: principal angles between the column spaces of two matrices.

Input is validated (shapes, finiteness, linearly independent columns) before any work; cosines and
sines are clipped to ``[0, 1]`` against floating-point round-off only, as the docstring says.
"""

from __future__ import annotations

import torch

from shiftlab.functional._checks import _eps
from shiftlab.functional._convert import ArrayLike, as_tensor

__all__ = ["principal_angles"]


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
