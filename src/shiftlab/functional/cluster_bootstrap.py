"""Cluster bootstrap through resampling weights, and the weighted (partial) correlations it needs.

A bootstrap resample that repeats row ``i`` :math:`w_i` times is the original sample with integer weights
:math:`w`. Statistics written for weights therefore evaluate every resample on one fixed-shape
``(B, n)`` weight matrix, whatever the cluster sizes: resampling whole clusters (runs of one seed, steps of
one block of a training log) is as vectorised as resampling rows. Weighted ranks and weighted least
squares here reproduce exactly what the expanded (row-repeated) sample would give.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch

from shiftlab.functional._checks import _check_int, _check_open_unit
from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional._weighted import _check_weights, _partial, _rank_all, _ranks, _validated
from shiftlab.functional.equivalence import bootstrap_interval
from shiftlab.functional.resampling import BootstrapResult, _generator

__all__ = [
    "WeightedCorrelations",
    "cluster_bootstrap",
    "cluster_bootstrap_weights",
    "weighted_correlations",
    "weighted_partial_correlation",
    "weighted_rankdata",
]


def weighted_rankdata(x: ArrayLike, weights: ArrayLike | None = None, *, dim: int = -1) -> torch.Tensor:
    r"""Average-tie ranks of ``x`` along ``dim`` in the sample repeating element ``i`` ``weights[i]`` times.

    With :math:`L_i = \sum_{j: x_j < x_i} w_j` and :math:`U_i = \sum_{j: x_j \le x_i} w_j`, the copies of
    :math:`x_i` occupy positions :math:`L_i + 1, \dots, U_i` of the expanded sorted sample, so

    .. math:: \operatorname{rank}_w(x_i) = \frac{L_i + 1 + U_i}{2}.

    With unit weights this is :func:`~shiftlab.functional.rankdata` (:func:`scipy.stats.rankdata`,
    ``method="average"``); with integer weights it equals the ranks of the expanded sample. Elements of
    weight 0 get the rank they would have if inserted, which weighted statistics then ignore.

    Parameters
    ----------
    x
        Any shape with at least one dimension.
    weights
        Nonnegative, broadcastable with ``x``; ``None`` for unit weights.
    dim
        The dimension to rank along.

    Returns
    -------
    torch.Tensor
        The broadcast shape of ``x`` and ``weights``, float64.

    Examples
    --------
    >>> weighted_rankdata([10.0, 30.0, 20.0], [2.0, 1.0, 1.0])  # the sample 10, 10, 30, 20
    tensor([1.5000, 4.0000, 3.0000], dtype=torch.float64)
    """
    t = as_tensor(x, name="x").to(torch.float64)
    if t.ndim == 0:
        raise ValueError("x must have at least one dimension")
    if weights is None:
        w = torch.ones_like(t)
    else:
        w = as_tensor(weights, name="weights").to(device=t.device, dtype=torch.float64)
        _check_weights(w)
    try:
        shape = torch.broadcast_shapes(t.shape, w.shape)
    except RuntimeError as err:
        raise ValueError(
            f"x and weights must broadcast together; got shapes {tuple(t.shape)} and {tuple(w.shape)}"
        ) from err
    if not -len(shape) <= dim < len(shape):
        raise ValueError(f"dim {dim} out of range for shape {tuple(shape)}")
    return _ranks(t, w, dim)


def weighted_partial_correlation(
    x: ArrayLike,
    y: ArrayLike,
    covariates: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    *,
    method: Literal["pearson", "spearman"] = "pearson",
) -> torch.Tensor:
    r"""Batched, weighted partial correlation of ``x`` and ``y`` given covariates (observations last).

    With weights :math:`w_i \ge 0`, weighted means :math:`\bar v = \sum_i w_i v_i / \sum_i w_i`, the
    centred covariates :math:`D` (columns :math:`z_j - \bar z_j`) and :math:`W = \operatorname{diag}(w)`,

    .. math::

        e_x = \tilde x - D (D^\top W D)^{+} D^\top W \tilde x, \qquad
        r = \frac{\sum_i w_i\, e_{x,i}\, e_{y,i}}
                 {\sqrt{\sum_i w_i e_{x,i}^2}\,\sqrt{\sum_i w_i e_{y,i}^2}},

    the weighted least-squares residuals on :math:`[1, Z]` correlated with weights. For integer weights
    this is :func:`~shiftlab.functional.partial_correlation`'s ``r`` on the sample that repeats row ``i``
    :math:`w_i` times (a bootstrap resample); with unit weights it is ``r`` itself. ``method="spearman"``
    first replaces ``x``, ``y`` and every covariate column by :func:`weighted_rankdata`. The pseudo-inverse
    keeps a covariate that is constant within a resample (a category not drawn) from breaking the fit.

    Where the residual of ``x`` or ``y`` is zero (weighted norm below :math:`10^{-10}` of the centred
    input's: it lies in the span of the covariates) or ``x``/``y`` is constant under the weights, the
    correlation is undefined and the result is NaN; the caller decides what that means.

    Parameters
    ----------
    x, y
        Shape ``(..., n)``, broadcastable; ``n`` observations on the last dimension.
    covariates
        ``None``, or shape ``(..., n, k)`` broadcastable with ``x``.
    weights
        Nonnegative, shape ``(..., n)`` broadcastable with ``x``; ``None`` for unit weights.
    method
        ``"pearson"`` or ``"spearman"``.

    Returns
    -------
    torch.Tensor
        The broadcast batch shape, float64.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(200, generator=g, dtype=torch.float64)
    >>> x = z + 0.5 * torch.randn(200, generator=g, dtype=torch.float64)
    >>> y = z + 0.5 * torch.randn(200, generator=g, dtype=torch.float64)
    >>> w = torch.randint(0, 3, (4, 200), generator=g).double()  # four resamples as weights
    >>> weighted_partial_correlation(x, y, z[:, None], w).shape
    torch.Size([4])
    """
    tx, ty, tz, tw, batch = _validated(x, y, covariates, weights, method)
    if method == "spearman":
        tx, ty, tz = _rank_all(tx, ty, tz, tw)
    return _partial(tx, ty, tz, tw).expand(batch)


class WeightedCorrelations(NamedTuple):
    """Result of :func:`weighted_correlations`: both batched like :func:`weighted_partial_correlation`."""

    raw: torch.Tensor
    """Correlation of ``x`` and ``y`` (no covariates)."""
    partial: torch.Tensor
    """Partial correlation given the covariates."""


def weighted_correlations(
    x: ArrayLike,
    y: ArrayLike,
    covariates: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    *,
    method: Literal["pearson", "spearman"] = "pearson",
) -> WeightedCorrelations:
    r"""Raw and partial weighted correlation in one pass (Spearman ranks computed once for both).

    ``raw`` is :func:`weighted_partial_correlation` without covariates and ``partial`` with them; the
    inputs are validated once, before broadcasting, so a batch of ``B`` weight vectors over one data set
    (a bootstrap) costs no per-resample validation or sorting.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    >>> z = torch.tensor([[1.0], [2.0], [3.0], [5.0], [4.0]])
    >>> res = weighted_correlations(x, x ** 2, z, method="spearman")
    >>> float(res.raw), round(float(res.partial), 6)
    (1.0, 1.0)
    """
    tx, ty, tz, tw, batch = _validated(x, y, covariates, weights, method)
    if method == "spearman":
        tx, ty, tz = _rank_all(tx, ty, tz, tw)
    raw = _partial(tx, ty, None, tw)
    partial = raw if tz is None else _partial(tx, ty, tz, tw)
    return WeightedCorrelations(raw=raw.expand(batch), partial=partial.expand(batch))


def cluster_bootstrap_weights(
    clusters: ArrayLike, n_boot: int, *, seed: int | torch.Generator = 0
) -> torch.Tensor:
    r"""Resampling weights of a cluster (block) bootstrap: whole clusters drawn with replacement.

    With :math:`G` distinct labels (coded :math:`0..G-1` in sorted order), each resample draws
    :math:`G` cluster codes uniformly with replacement; the weight of row :math:`i` is how often its cluster
    was drawn:

    .. math:: w_{b,i} = \#\{g: C_{b,g} = c(i)\}, \qquad C_b \sim \mathrm{Uniform}\{0..G-1\}^G.

    Rows of one cluster always share a weight, so within-cluster dependence (runs of one seed, steps of
    one block of a training log: ``clusters = arange(n) // block``) is kept. The draw is
    ``torch.randint(0, G, (n_boot, G))`` on a CPU generator: with one row per cluster, labelled in row
    order, the weights are exactly the row counts of :func:`~shiftlab.functional.paired_bootstrap_ci`'s
    resamples for the same ``seed``.

    Parameters
    ----------
    clusters
        Shape ``(n,)``, numeric cluster labels; at least 2 distinct.
    n_boot
        Number of resamples ``B``.
    seed
        An int, or a CPU :class:`torch.Generator` (its state advances).

    Returns
    -------
    torch.Tensor
        Shape ``(B, n)``, float64, each row summing to ``n`` only when clusters are equal-sized.

    Examples
    --------
    >>> w = cluster_bootstrap_weights([0, 0, 1, 1, 2, 2], 3, seed=0)
    >>> w.shape, bool((w[:, 0] == w[:, 1]).all())
    (torch.Size([3, 6]), True)
    """
    labels = as_tensor(clusters, name="clusters", ndim=1, min_rows=2)
    n_boot = _check_int(n_boot, "n_boot", low=1)
    _, codes = torch.unique(labels, sorted=True, return_inverse=True)
    n_clusters = int(codes.max()) + 1
    if n_clusters < 2:
        raise ValueError("the cluster bootstrap needs at least 2 distinct clusters; got 1")
    gen = _generator(seed)
    draws = torch.randint(0, n_clusters, (n_boot, n_clusters), generator=gen)
    counts = torch.zeros(n_boot, n_clusters, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_boot, n_clusters, dtype=torch.float64)
    )
    return counts[:, codes.cpu()].to(labels.device)


def cluster_bootstrap(
    statistic: Callable[..., torch.Tensor],
    *samples: ArrayLike,
    clusters: ArrayLike,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int | torch.Generator = 0,
    batch_size: int | None = None,
) -> BootstrapResult:
    r"""Cluster bootstrap percentile interval of a weighted statistic (vectorised, seeded).

    ``statistic(*samples, weights)`` receives every sample with a leading batch dimension (the data are
    not copied: resamples differ only in their weights) and the ``(batch, n)`` weights of
    :func:`cluster_bootstrap_weights`; it must return shape ``(batch, ...)``. The estimate uses unit
    weights; the interval is :func:`~shiftlab.functional.equivalence.bootstrap_interval` of the
    replicates (linear-interpolation percentiles, as :func:`~shiftlab.functional.paired_bootstrap_ci`).

    Parameters
    ----------
    statistic
        Weighted statistic, e.g. a wrapper of :func:`weighted_partial_correlation`.
    *samples
        Arrays with the same first dimension ``n``.
    clusters
        Shape ``(n,)`` labels; at least 2 distinct.
    n_boot, alpha, seed
        As for :func:`~shiftlab.functional.paired_bootstrap_ci`; ``n_boot >= 2 / alpha``.
    batch_size
        Evaluate at most this many resamples at a time (memory only; same result).

    Returns
    -------
    BootstrapResult
        With ``method="percentile"``.

    Examples
    --------
    >>> import torch
    >>> def weighted_mean(x, w):
    ...     return (w * x[..., 0]).sum(-1) / w.sum(-1)
    >>> x = torch.arange(12.0)[:, None]
    >>> res = cluster_bootstrap(weighted_mean, x, clusters=torch.arange(12) // 3, n_boot=500, seed=0)
    >>> bool(res.ci_low < 5.5 < res.ci_high), float(res.estimate)
    (True, 5.5)
    """
    if not callable(statistic):
        raise TypeError(f"statistic must be callable; got {type(statistic).__name__}")
    level = _check_open_unit(alpha, "alpha")
    n_boot = _check_int(n_boot, "n_boot", low=1)
    if n_boot * level / 2 < 1:
        raise ValueError(
            f"n_boot={n_boot} is too small for alpha={alpha}: need n_boot >= {int(2 / level) + 1}"
        )
    step = n_boot if batch_size is None else _check_int(batch_size, "batch_size", low=1)
    if not samples:
        raise ValueError("cluster_bootstrap needs at least one sample")
    tensors = tuple(as_tensor(s, name=f"samples[{i}]", min_rows=2) for i, s in enumerate(samples))
    n = tensors[0].shape[0]
    for i, t in enumerate(tensors[1:], start=1):
        if t.shape[0] != n:
            raise ValueError(
                f"samples must have the same length; samples[0] has {n}, samples[{i}] {t.shape[0]}"
            )
    labels = as_tensor(clusters, name="clusters", ndim=1)
    if labels.shape[0] != n:
        raise ValueError(f"clusters must have one label per row ({n}); got {labels.shape[0]}")
    weights = cluster_bootstrap_weights(labels, n_boot, seed=seed).to(tensors[0].device)

    def call(w: torch.Tensor) -> torch.Tensor:
        out = statistic(*(t[None] for t in tensors), w)
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != w.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"statistic must return shape ({w.shape[0]}, ...); got {got}")
        return out

    estimate = call(torch.ones(1, n, dtype=torch.float64, device=weights.device))[0]
    dist = torch.cat([call(weights[s : s + step]) for s in range(0, n_boot, step)], dim=0)
    if not bool(torch.isfinite(dist).all()) or not bool(torch.isfinite(estimate).all()):
        raise ValueError(
            "statistic returned non-finite values on the data or on some resamples (e.g. a resample in "
            "which a variable is constant: use more clusters)"
        )
    low, high = bootstrap_interval(dist, level)
    return BootstrapResult(
        estimate=estimate,
        ci_low=low.to(dist.dtype),
        ci_high=high.to(dist.dtype),
        distribution=dist,
        method="percentile",
        alpha=level,
    )
