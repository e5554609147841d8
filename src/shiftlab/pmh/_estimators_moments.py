r"""Single-population nuisance estimators: D2 ``isotropic``, D5 ``compositional``, D6 ``temporal``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators_common import (
    Floor,
    check_int,
    check_labels,
    check_model,
    check_positive,
    check_samples,
    check_site,
    estimate_from_rows,
    prepare_site,
    result_dtype,
    signal_basis,
    site_features,
)


def _check_shape(shape: Any, dim: Any) -> tuple[int, ...]:
    if (shape is None) == (dim is None):
        raise ValueError(
            "isotropic with sigma needs exactly one of shape=(...) or dim=d for the space's size"
        )
    if dim is not None:
        return (check_int(dim, "dim", low=1),)
    if not isinstance(shape, Sequence) or len(shape) == 0:
        raise ValueError(f"shape must be a non-empty tuple of ints; got {shape!r}")
    return tuple(check_int(s, "shape entry", low=1) for s in shape)


def isotropic(
    sigma: float | None = None,
    repeats: Any = None,
    *,
    shape: Sequence[int] | None = None,
    dim: int | None = None,
    model: nn.Module | None = None,
    site: str = "input",
) -> NuisanceEstimate:
    r"""D2: isotropic nuisance :math:`\Sigma = \sigma^2 I_d` (rank-0 factor, ``floor`` = σ²).

    Either ``sigma`` is given (with ``shape`` or ``dim``), or it is estimated from repeated measurements
    :math:`x_{ir}` of ``n`` items, ``R >= 2`` times each, as the pooled within-item variance per
    coordinate

    .. math:: \hat\sigma^2 = \frac{1}{n (R - 1) d} \sum_{i=1}^{n}\sum_{r=1}^{R}
              \lVert x_{ir} - \bar x_{i\cdot} \rVert^2 .

    The stored ``spectrum`` is that of the pooled within-item covariance (whose trace is
    :math:`d\hat\sigma^2`), so :func:`~shiftlab.pmh.eigengap_check` can flag measurement noise that is far
    from isotropic; with ``sigma`` given it is :math:`\sigma^2` repeated d times.

    Parameters
    ----------
    sigma
        Noise standard deviation per coordinate (> 0), in the site's units.
    repeats
        Repeated measurements ``(n_items, n_repeats, *shape)``.
    shape, dim
        Size of the space when ``sigma`` is given (exactly one of them).
    model, site
        Take ``repeats`` through ``model`` to layer ``site`` first (default: the input itself).

    Examples
    --------
    >>> est = isotropic(sigma=0.5, dim=4)
    >>> est.rank, est.floor, est.trace
    (0, 0.25, 1.0)
    """
    if (sigma is None) == (repeats is None):
        raise ValueError("isotropic needs exactly one of sigma=... or repeats=(n_items, n_repeats, ...)")
    if sigma is not None:
        value = check_positive(sigma, "sigma")
        shp = _check_shape(shape, dim)
        if model is not None:
            check_site(site, check_model(model))
        elif not isinstance(site, str) or site == "output":
            raise ValueError(f"site must be 'input' or a layer name; got {site!r}")
        d = math.prod(shp)
        variance = value * value
        return NuisanceEstimate(
            factor=torch.zeros(d, 0, dtype=torch.float64),
            floor=variance,
            spectrum=torch.full((d,), variance, dtype=torch.float64),
            site=site,
            shape=shp,
            estimator="isotropic",
            counts={},
        )
    if shape is not None or dim is not None:
        raise ValueError("shape/dim are read from repeats; pass them only with sigma")
    residual, shp, dtype = within_item_residuals(repeats, model, site)
    n_items, n_repeats = residual.shape[:2]
    dof = n_items * (n_repeats - 1)
    return isotropic_from_spectrum(
        torch.linalg.svdvals(residual.reshape(n_items * n_repeats, -1)).pow(2) / dof,
        dof=dof,
        site=site,
        shape=shp,
        counts={"n_items": n_items, "n_repeats": n_repeats},
        dtype=dtype,
    )


def within_item_residuals(
    repeats: Any, model: nn.Module | None, site: str
) -> tuple[torch.Tensor, tuple[int, ...], torch.dtype]:
    """float64 ``(n_items, n_repeats, d)`` deviations from each item's mean at the site, the site shape,
    and the result dtype."""
    reps = check_samples(repeats, "repeats", ndim_min=3)
    n_items, n_repeats = reps.shape[:2]
    if n_repeats < 2:
        raise ValueError(f"repeats needs >= 2 measurements per item (axis 1); got {n_repeats}")
    flat = reps.reshape(n_items * n_repeats, *reps.shape[2:])
    copy, shp = prepare_site(model, site, flat, None, 0.0)
    feats, _ = site_features(flat, copy, site)
    per_item = feats.double().cpu().reshape(n_items, n_repeats, -1)
    return per_item - per_item.mean(dim=1, keepdim=True), shp, result_dtype(feats)


def isotropic_from_spectrum(
    spectrum: torch.Tensor,
    *,
    dof: int,
    site: str,
    shape: tuple[int, ...],
    counts: dict[str, int],
    dtype: torch.dtype,
) -> NuisanceEstimate:
    r"""The D2 estimate from the eigenvalues of the pooled within-item covariance :math:`W / \text{dof}`.

    ``spectrum`` holds the descending eigenvalues of :math:`W/\text{dof}` with
    :math:`W = \sum_{i,r} (x_{ir} - \bar x_{i\cdot})(x_{ir} - \bar x_{i\cdot})^\top` (at most d of them);
    :math:`\hat\sigma^2 = \operatorname{tr}(W) / (\text{dof} \cdot d)` is their sum over d, and the stored
    spectrum keeps the first ``min(d, dof)`` (W has rank at most dof). Shared by :func:`isotropic` (values
    from the SVD of the residuals) and the estimate from all-reduced statistics (values from the
    eigendecomposition of the summed W).
    """
    d = math.prod(shape)
    variance = float(spectrum.sum()) / d
    if variance <= 0:
        raise ValueError("the repeated measurements are identical: the within-item variance is zero")
    return NuisanceEstimate(
        factor=torch.zeros(d, 0, dtype=dtype),
        floor=variance,
        spectrum=spectrum[: min(d, dof)].to(dtype),
        site=site,
        shape=shape,
        estimator="isotropic",
        counts=counts,
    )


def _selection(coordinates: Any, size: int, feature_names: Sequence[str] | None) -> list[int]:
    if feature_names is not None:
        names = list(feature_names)
        if len(names) != size or not all(isinstance(n, str) for n in names):
            raise ValueError(f"feature_names must be {size} strings (one per coordinate); got {len(names)}")
        if len(set(names)) != size:
            raise ValueError("feature_names must be unique")
    if isinstance(coordinates, str) or not isinstance(coordinates, Sequence | np.ndarray | torch.Tensor):
        raise TypeError("coordinates must be a sequence of indices or names, or a boolean mask")
    items = coordinates.tolist() if isinstance(coordinates, np.ndarray | torch.Tensor) else list(coordinates)
    if len(items) == 0:
        raise ValueError("coordinates is empty: name at least one nuisance coordinate")
    if all(isinstance(i, bool | np.bool_) for i in items):
        if len(items) != size:
            raise ValueError(f"a boolean coordinate mask needs {size} entries; got {len(items)}")
        chosen = [i for i, keep in enumerate(items) if keep]
        if not chosen:
            raise ValueError("the coordinate mask selects nothing")
        return chosen
    if all(isinstance(i, str) for i in items):
        if feature_names is None:
            raise ValueError("coordinates are names: pass feature_names to resolve them")
        lookup = {n: i for i, n in enumerate(feature_names)}
        unknown = [i for i in items if i not in lookup]
        if unknown:
            raise ValueError(f"unknown coordinate name(s) {unknown}; valid names: {list(feature_names)}")
        chosen = [lookup[i] for i in items]
    elif all(isinstance(i, int | np.integer) and not isinstance(i, bool) for i in items):
        chosen = [int(i) for i in items]
        bad = [i for i in chosen if not 0 <= i < size]
        if bad:
            raise ValueError(f"coordinate indices {bad} are out of range 0..{size - 1}")
    else:
        raise TypeError("coordinates must be all ints, all names (str) or all booleans")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"coordinates contain duplicates: {items}")
    return sorted(chosen)


def coordinate_mask(
    coordinates: Any, shape: tuple[int, ...], feature_names: Sequence[str] | None
) -> tuple[torch.Tensor, int]:
    """Flat (d,) boolean mask of the chosen entries of a sample's first axis, and how many were chosen."""
    chosen = _selection(coordinates, shape[0], feature_names)
    mask = torch.zeros(shape[0], dtype=torch.bool)
    mask[chosen] = True
    return mask.view(-1, *([1] * (len(shape) - 1))).expand(shape).reshape(-1), len(chosen)


def compositional(
    x: Any,
    coordinates: Any,
    *,
    feature_names: Sequence[str] | None = None,
    model: nn.Module | None = None,
    site: str = "input",
    labels: Any = None,
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceEstimate:
    r"""D5: the covariance of ``x`` restricted to named nuisance coordinates (or token groups).

    With :math:`P_S` the diagonal 0/1 projection onto the selected coordinates and the unbiased
    covariance :math:`\hat C = \frac{1}{n-1}\sum_i (x_i - \bar x)(x_i - \bar x)^\top` (a second moment of
    deviations from the mean: the variation *within* the data along the nuisance coordinates, which
    have no systematic displacement here),

    .. math:: \hat\Sigma = P_S \hat C P_S .

    The selection acts on the **first axis of one sample**: for tabular ``(n, d)`` data it picks
    coordinates; for token data ``(n, T, e)`` it picks whole tokens (groups of ``e`` coordinates); at a
    convolutional layer ``(C, H, W)`` it picks channels.

    Parameters
    ----------
    x
        Samples ``(n, *shape)``, n >= 2.
    coordinates
        Indices, names (with ``feature_names``) or a boolean mask over ``shape[0]``.
    feature_names
        Names of the ``shape[0]`` entries.
    model, site, labels, rank, floor
        As in :func:`~shiftlab.pmh.augmentation`.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([5.0, 1.0, 1.0])
    >>> est = compositional(x, ["light"], feature_names=["digit", "light", "tilt"], rank=1)
    >>> est.basis()[:, 0].abs().argmax().item()
    1
    """
    xs = check_samples(x, "x", min_rows=2)
    copy, shape = prepare_site(model, site, xs, rank, floor)
    mask, n_coordinates = coordinate_mask(coordinates, shape, feature_names)
    feats, _ = site_features(xs, copy, site)
    f64 = feats.double().cpu()
    n = xs.shape[0]
    rows = (f64 - f64.mean(0)) * mask / math.sqrt(n - 1)
    signal = None
    if labels is not None:
        signal = signal_basis(f64, check_labels(labels, n, "labels"))
        if signal is None:
            raise ValueError("labels hold a single class: the signal directions need at least 2 classes")
    counts = {"n_samples": n, "n_coordinates": n_coordinates, "n_selected_dims": int(mask.sum())}
    return estimate_from_rows(
        rows,
        n_data=n,
        site=site,
        shape=shape,
        estimator="compositional",
        counts=counts,
        rank=rank,
        floor=floor,
        signal=signal,
        dtype=result_dtype(feats),
    )


def sequence_list(sequences: Any, lag: int) -> list[torch.Tensor]:
    """Sequences as a list of ``(T_k, *shape)`` tensors with a common shape and more than ``lag`` steps."""
    if isinstance(sequences, torch.Tensor | np.ndarray):
        t = check_samples(sequences, "sequences", ndim_min=3)
        seqs = list(t)
    elif isinstance(sequences, Sequence) and not isinstance(sequences, str) and len(sequences) > 0:
        seqs = [check_samples(s, f"sequences[{i}]") for i, s in enumerate(sequences)]
    else:
        raise TypeError("sequences must be a (n_seq, T, ...) array or a non-empty list of (T_i, ...) arrays")
    shapes = {tuple(s.shape[1:]) for s in seqs}
    if len(shapes) != 1:
        raise ValueError(f"all sequences must have the same per-step shape; got {sorted(shapes)}")
    short = [i for i, s in enumerate(seqs) if s.shape[0] <= lag]
    if short:
        raise ValueError(f"sequences {short[:10]} have <= lag={lag} steps: each needs at least lag + 1 steps")
    return seqs


def temporal_deltas(seqs: list[torch.Tensor], copy: nn.Module | None, site: str, lag: int) -> torch.Tensor:
    """float64 rows f(x_{t+lag}) - f(x_t) of every sequence, concatenated in order."""
    deltas = []
    for s in seqs:
        feats, _ = site_features(s, copy, site)
        f64 = feats.double().cpu()
        deltas.append(f64[lag:] - f64[:-lag])
    return torch.cat(deltas)


def temporal(
    sequences: Any,
    *,
    lag: int = 1,
    model: nn.Module | None = None,
    site: str = "input",
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceEstimate:
    r"""D6: second moment of successive differences along sequences (slow drift over time).

    For sequences :math:`x^{(k)}_1, \dots, x^{(k)}_{T_k}` and :math:`\delta^{(k)}_t = f(x^{(k)}_{t+L}) -
    f(x^{(k)}_t)` (lag :math:`L`, default 1),

    .. math:: \hat\Sigma = \frac{1}{\sum_k (T_k - L)} \sum_k \sum_{t=1}^{T_k - L}
              \delta^{(k)}_t \delta^{(k)\top}_t ,

    uncentred: a steady drift direction is part of the nuisance.

    Parameters
    ----------
    sequences
        ``(n_seq, T, *shape)`` or a list of ``(T_k, *shape)`` arrays with a common ``shape``.
    lag
        Step between compared observations (>= 1).
    model, site, rank, floor
        As in :func:`~shiftlab.pmh.augmentation`.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> steps = torch.randn(4, 50, 3, generator=g) * torch.tensor([0.1, 1.0, 0.1])
    >>> walks = steps.cumsum(dim=1)
    >>> temporal(walks, rank=1).basis()[:, 0].abs().argmax().item()
    1
    """
    lag = check_int(lag, "lag", low=1)
    seqs = sequence_list(sequences, lag)
    copy, shape = prepare_site(model, site, seqs[0], rank, floor)
    all_deltas = temporal_deltas(seqs, copy, site, lag)
    n = all_deltas.shape[0]
    return estimate_from_rows(
        all_deltas / math.sqrt(n),
        n_data=n,
        site=site,
        shape=shape,
        estimator="temporal",
        counts={"n_sequences": len(seqs), "n_differences": n},
        rank=rank,
        floor=floor,
        signal=None,
        dtype=result_dtype(*seqs),
    )
