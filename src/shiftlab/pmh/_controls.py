"""Falsification controls built from the matched estimate.

Each control keeps the matched estimate's total variance tr Σ and changes only *where* it points:

* ``isotropic``: Σ_iso = (tr Σ / d) I, the same trace spread evenly;
* ``wrong``: the same eigenvalues (and floor) on a random orthonormal subspace orthogonal to Σ's range;
* ``signal``: the class-mean-difference directions (the things the model must stay sensitive to), each with
  variance tr Σ / k.

If the matched penalty helps no more than these, the improvement is not about the estimated direction.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from shiftlab.pmh._estimate import NuisanceEstimate

Mode = Literal["matched", "isotropic", "wrong", "signal"]
MODES: tuple[str, ...] = ("matched", "isotropic", "wrong", "signal")


def _orthogonal_complement_basis(basis: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    d = basis.shape[0]
    g = torch.randn(d, k, generator=generator, dtype=torch.float64).to(basis.device)
    b = basis.double()
    g = g - b @ (b.T @ g)
    g = g - b @ (b.T @ g)  # second pass against round-off
    q, _ = torch.linalg.qr(g)
    return q.to(basis.dtype)


def control_estimate(estimate: NuisanceEstimate, mode: str, *, seed: int = 0) -> NuisanceEstimate:
    r"""The covariance used by arm ``mode``, built from the matched ``estimate``.

    Parameters
    ----------
    estimate
        The matched Σ = F Fᵀ + σ² I.
    mode
        ``"matched"`` (returned unchanged), ``"isotropic"``, ``"wrong"`` or ``"signal"``.
    seed
        Seeds the random subspace of ``"wrong"``.

    Returns
    -------
    NuisanceEstimate
        Same site, shape and trace; ``estimator`` names the control, e.g. ``"wrong(subspace)"``.

    Notes
    -----
    ``wrong``: with :math:`U` the orthonormal basis of range(F) and :math:`Q` a random orthonormal
    :math:`d \times r` basis with :math:`U^\top Q = 0`,
    :math:`F_{wrong} = Q\,\mathrm{diag}(\lVert f_i \rVert)`.
    It needs d ≥ 2r. ``signal`` needs ``estimate.signal`` (estimate with source labels).

    Examples
    --------
    >>> f = torch.zeros(4, 1); f[0, 0] = 2.0
    >>> est = NuisanceEstimate(f, 0.0, torch.tensor([4.0, 0.0]), "input", (4,), "demo", {})
    >>> iso = control_estimate(est, "isotropic")
    >>> iso.rank, iso.floor, iso.trace
    (0, 1.0, 4.0)
    >>> wrong = control_estimate(est, "wrong")
    >>> round(float(wrong.factor[0, 0]), 6), round(wrong.trace, 6)
    (0.0, 4.0)
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "matched":
        return estimate
    trace = estimate.trace
    label = f"{mode}({estimate.estimator})"
    empty = estimate.factor.new_zeros(estimate.dim, 0)
    if mode == "isotropic":
        return dataclasses.replace(estimate, factor=empty, floor=trace / estimate.dim, estimator=label)
    if mode == "wrong":
        r = estimate.rank
        if r == 0:
            raise ValueError(
                "a purely isotropic estimate has no direction to move; the wrong control needs rank >= 1"
            )
        if estimate.dim < 2 * r:
            raise ValueError(f"the wrong control needs d >= 2r; got d={estimate.dim}, r={r}")
        generator = torch.Generator().manual_seed(seed)
        q = _orthogonal_complement_basis(estimate.basis(), r, generator)
        norms = estimate.factor.norm(dim=0)
        return dataclasses.replace(estimate, factor=q * norms.unsqueeze(0), estimator=label)
    if estimate.signal is None or estimate.signal.shape[1] == 0:
        raise ValueError(
            "the signal control needs the class-mean-difference basis; estimate with source labels to get it"
        )
    k = estimate.signal.shape[1]
    factor = estimate.signal * (trace / k) ** 0.5
    return dataclasses.replace(estimate, factor=factor, floor=0.0, estimator=label)
