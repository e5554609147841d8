"""Resampling on tensors: paired bootstrap confidence intervals and (block) permutation tests.

All resampling is vectorised: resampled data reach the user's statistic as one batched tensor with a
leading resample dimension, and randomness comes only from an explicit ``seed`` (or a
:class:`torch.Generator`), drawn on the CPU so that the same seed gives the same result on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from shiftlab.functional._checks import _check_int, _check_open_unit
from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.stats import _normal_quantile

__all__ = [
    "BootstrapResult",
    "PermutationTestResult",
    "paired_bootstrap_ci",
    "permutation_test",
]

Alternative = Literal["two-sided", "greater", "less"]


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
    >>> from shiftlab.functional import mean_difference
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
    >>> from shiftlab.functional import pearson
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
