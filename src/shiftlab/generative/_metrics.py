"""Metrics of a generator's samples: distances to a reference sample (with units) and mode coverage."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shiftlab.functional import ArrayLike, as_tensor
from shiftlab.functional.sinkhorn import sinkhorn_divergence
from shiftlab.functional.sliced import sliced_wasserstein2
from shiftlab.functional.transport import wasserstein2

__all__ = ["ModeCoverage", "SampleDistances", "compare_samples", "mode_coverage"]


@dataclass(frozen=True)
class SampleDistances:
    """Three distances between two samples, each with its units.

    Attributes
    ----------
    w2 : float
        Exact :math:`W_2` (POT), data units.
    sliced_w2 : float
        Sliced :math:`W_2`, data units (:math:`\\le W_2`).
    sinkhorn : float
        Debiased Sinkhorn divergence :math:`S_\\varepsilon`, **squared** data units (approximates
        :math:`W_2^2`; compare its square root with ``w2``).
    """

    w2: float
    sliced_w2: float
    sinkhorn: float


def compare_samples(
    x: ArrayLike, y: ArrayLike, *, blur: float = 0.3, n_projections: int = 256, seed: int = 0
) -> SampleDistances:
    """Exact W2, sliced W2 and the debiased Sinkhorn divergence between two samples (rows flattened).

    Examples
    --------
    >>> d = compare_samples([[0.0, 0.0], [1.0, 0.0]], [[0.0, 3.0], [1.0, 3.0]])
    >>> d.w2
    3.0
    """
    xt = as_tensor(x, name="x", min_rows=1)
    yt = as_tensor(y, name="y", min_rows=1)
    xf, yf = xt.reshape(xt.shape[0], -1), yt.reshape(yt.shape[0], -1)
    return SampleDistances(
        w2=float(wasserstein2(xf, yf)),
        sliced_w2=float(sliced_wasserstein2(xf, yf, n_projections=n_projections, seed=seed)),
        sinkhorn=float(sinkhorn_divergence(xf, yf, blur=blur)),
    )


@dataclass(frozen=True)
class ModeCoverage:
    """Cluster occupancy of samples on a mixture.

    Attributes
    ----------
    occupancy : tuple of float
        Fraction of all samples within ``radius`` of each center (nearest center wins).
    expected : tuple of float
        The mixture weights.
    off_mode : float
        Fraction of samples farther than ``radius`` from every center.
    n_covered : int
        Modes holding at least ``min_fraction`` of the samples.
    max_error : float
        :math:`\\max_k \\lvert \\mathrm{occupancy}_k - w_k\\rvert`.
    """

    occupancy: tuple[float, ...]
    expected: tuple[float, ...]
    off_mode: float
    n_covered: int
    max_error: float


def mode_coverage(
    samples: ArrayLike,
    centers: ArrayLike,
    *,
    radius: float,
    weights: ArrayLike | None = None,
    min_fraction: float | None = None,
) -> ModeCoverage:
    """Which modes of a mixture the samples occupy, and how evenly.

    Each sample is assigned to its nearest center; it counts for that mode if it lies within ``radius``
    (e.g. 3 standard deviations), and as off-mode otherwise.

    Parameters
    ----------
    samples
        ``(n, d)`` samples.
    centers
        ``(K, d)`` mode centers.
    radius
        Distance within which a sample belongs to a mode (data units).
    weights
        Expected mode weights (``None``: equal).
    min_fraction
        Occupancy for a mode to count as covered (default: half its expected weight).

    Returns
    -------
    ModeCoverage

    Examples
    --------
    >>> cov = mode_coverage([[0.0, 0.1], [4.0, 0.0], [9.0, 9.0]], [[0.0, 0.0], [4.0, 0.0]], radius=1.0)
    >>> cov.n_covered, round(cov.off_mode, 3)
    (2, 0.333)
    """
    x = as_tensor(samples, name="samples", ndim=2, min_rows=1).double()
    c = as_tensor(centers, name="centers", ndim=2, min_rows=1).double()
    if x.shape[1] != c.shape[1]:
        raise ValueError(
            f"samples and centers must have the same dimension; got {x.shape[1]} and {c.shape[1]}"
        )
    if isinstance(radius, bool) or not isinstance(radius, int | float) or not radius > 0:
        raise ValueError(f"radius must be a positive number; got {radius!r}")
    k = c.shape[0]
    w = (
        torch.full((k,), 1.0 / k, dtype=torch.float64)
        if weights is None
        else as_tensor(weights, name="weights", ndim=1).double()
    )
    if w.shape[0] != k:
        raise ValueError(f"weights must have one entry per center ({k}); got {w.shape[0]}")
    dist = torch.cdist(x, c)
    nearest_dist, nearest = dist.min(dim=1)
    inside = nearest_dist <= radius
    occ = torch.stack([((nearest == j) & inside).double().mean() for j in range(k)])
    threshold = 0.5 * w if min_fraction is None else torch.full_like(w, float(min_fraction))
    return ModeCoverage(
        occupancy=tuple(float(v) for v in occ),
        expected=tuple(float(v) for v in w),
        off_mode=float((~inside).double().mean()),
        n_covered=int((occ >= threshold).sum()),
        max_error=float((occ - w).abs().max()),
    )
