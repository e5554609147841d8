r"""Bootstrap for a grid of paired scores: seeds × examples, resampled on both axes.

A deploy comparison gives a matrix :math:`D \in \mathbb{R}^{K \times n}` of paired differences (arm A minus
arm B for training seed k and holdout example i). Both the seeds and the examples are samples, so an
interval for the mean difference has to resample both (a *crossed* or two-way bootstrap). A resample that
draws seeds with multiplicities :math:`w \in \mathbb{N}^K` and examples with multiplicities
:math:`c \in \mathbb{N}^n` has mean

.. math:: \bar D^{*} = \frac{w^\top D\, c}{K n},

so all resamples come from two multinomial count matrices and one matrix product, with no Python loop.
"""

from __future__ import annotations

import torch

from shiftlab.functional._checks import _check_int, _check_open_unit
from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.resampling import BootstrapResult, _generator

__all__ = ["crossed_bootstrap_ci"]


def _counts(n_boot: int, n: int, generator: torch.Generator) -> torch.Tensor:
    draws = torch.randint(0, n, (n_boot, n), generator=generator)
    counts = torch.zeros(n_boot, n, dtype=torch.float64)
    counts.scatter_add_(1, draws, torch.ones(n_boot, n, dtype=torch.float64))
    return counts


def crossed_bootstrap_ci(
    values: ArrayLike,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int | torch.Generator = 0,
    resample_rows: bool = True,
) -> BootstrapResult:
    r"""Percentile interval for the grand mean of ``values`` (K rows × n columns), resampling both axes.

    Parameters
    ----------
    values
        (K, n) paired scores or differences: rows are training seeds, columns holdout examples.
    n_boot
        Number of resamples.
    alpha
        One minus the confidence level.
    seed
        Seeds the draws (CPU generator, so results do not depend on the device).
    resample_rows
        Resample the rows too (default). ``False`` treats the K rows as fixed and resamples examples only.

    Returns
    -------
    BootstrapResult
        ``estimate`` is the plain mean; ``distribution`` the ``n_boot`` resampled means.

    Examples
    --------
    >>> d = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]])
    >>> res = crossed_bootstrap_ci(d, n_boot=500, seed=0)
    >>> float(res.estimate), bool(res.ci_low <= res.estimate <= res.ci_high)
    (0.75, True)
    """
    d = as_tensor(values, name="values", ndim=2).to(torch.float64)
    k, n = d.shape
    if k < 1 or n < 2:
        raise ValueError(f"values needs at least 1 row and 2 columns; got shape {(k, n)}")
    n_boot = _check_int(n_boot, "n_boot", low=100)
    alpha = _check_open_unit(alpha, "alpha")
    gen = _generator(seed)
    rows = _counts(n_boot, k, gen) if resample_rows else torch.ones(n_boot, k, dtype=torch.float64)
    cols = _counts(n_boot, n, gen)
    dist = ((rows @ d) * cols).sum(1) / (k * n)
    sorted_dist = dist.sort().values
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
    low, high = torch.quantile(sorted_dist, q)
    return BootstrapResult(
        estimate=d.mean(), ci_low=low, ci_high=high, distribution=dist, method="percentile", alpha=alpha
    )
