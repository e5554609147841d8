"""Multiple testing: Benjamini-Hochberg false discovery rate control on a vector of p-values."""

from __future__ import annotations

from typing import NamedTuple

import torch

from shiftlab.functional._checks import _check_open_unit
from shiftlab.functional._convert import ArrayLike, as_tensor

__all__ = ["BenjaminiHochberg", "benjamini_hochberg"]


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
