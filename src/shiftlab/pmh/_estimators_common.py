"""Shared plumbing of the nuisance estimators: input checks, features at a site, exact PSD row factors.

Every estimator reduces to a positive semi-definite matrix written as a sum of outer products of rows,
:math:`\\hat\\Sigma = R^\\top R`. :func:`estimate_from_rows` turns such rows into a
:class:`~shiftlab.pmh.NuisanceEstimate` (through the thin SVD of ``_estimate.from_second_moment_samples``)
keeping the untruncated spectrum; :func:`positive_part_rows` gives rows of :math:`(A - B)_+` for two PSD
matrices given by rows, without ever forming a d×d matrix when d exceeds the row count.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from shiftlab.functional import as_tensor
from shiftlab.pmh._estimate import NuisanceEstimate, from_second_moment_samples
from shiftlab.pmh._layers import INPUT, OUTPUT, features, resolve_module, site_shape

Floor = float | Literal["residual"]

_EPS64 = float(torch.finfo(torch.float64).eps)


def check_samples(x: Any, name: str, *, min_rows: int = 1, ndim_min: int = 2) -> torch.Tensor:
    """``x`` as a finite float tensor with at least ``min_rows`` rows and ``ndim_min`` dimensions."""
    if isinstance(x, torch.Tensor | np.ndarray) and x.ndim >= 1 and x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows); pass at least {min_rows} sample(s)")
    t = as_tensor(x, name=name)
    if t.ndim < ndim_min:
        raise ValueError(
            f"{name} must have at least {ndim_min} dimensions (samples first); got shape {tuple(t.shape)}"
        )
    if t.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows; got {t.shape[0]}")
    if t.shape[1:].numel() == 0:
        raise ValueError(f"{name} has no features: shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def check_labels(y: Any, n: int, name: str) -> torch.Tensor:
    """Integer class labels (int64, on the CPU), 1-D, one per row; ``TypeError`` for floats/bools."""
    if isinstance(y, torch.Tensor):
        t = y
    elif isinstance(y, np.ndarray | list | tuple):
        arr = np.asarray(y)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"{name} must hold integer class labels; got dtype {arr.dtype} (cast with .astype(int))"
            )
        t = torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64)))
    else:
        raise TypeError(f"{name} must be a tensor, numpy array or list of ints; got {type(y).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer class labels; got dtype {t.dtype} (cast with .long())")
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), one label per row; got {tuple(t.shape)}")
    return t.long().cpu()


def check_rank(rank: int | None, d: int) -> None:
    """``None`` (automatic) or an int with ``1 <= rank < d``."""
    if rank is None:
        return
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int or None; got {type(rank).__name__}")
    if not 1 <= rank < d:
        raise ValueError(f"rank must satisfy 1 <= rank < d = {d}; got {rank}")


def check_floor(floor: Floor) -> None:
    """``"residual"`` or a finite float >= 0."""
    if floor == "residual":
        return
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not math.isfinite(floor) or floor < 0:
        raise ValueError(f"floor must be 'residual' or a finite float >= 0; got {floor!r}")


def check_positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """A finite real number > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}; got {value}")
    return float(value)


def check_int(value: Any, name: str, *, low: int) -> int:
    """An int >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    return value


def check_site(site: Any, model: nn.Module | None) -> None:
    """``"input"``, or a layer name of ``model`` (listing the valid names otherwise)."""
    if not isinstance(site, str):
        raise TypeError(f"site must be a str ('input' or a layer name); got {type(site).__name__}")
    if site == OUTPUT:
        raise ValueError(
            "site 'output' is a measurement point, not a perturbation site; use 'input' or a layer name"
        )
    if site == INPUT:
        return
    if model is None:
        raise ValueError(f"site={site!r} is a layer: pass the model whose layer {site!r} should be read")
    resolve_module(model, site)


def check_model(model: Any) -> nn.Module:
    """``model`` must be an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with parameters that need no gradient: the user's model is never touched.

    Eval mode matters beyond dropout: BatchNorm in train mode updates its running statistics even under
    ``torch.no_grad()``.
    """
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def to_model(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``x`` on the model's device, in the dtype of its first floating-point parameter (if any)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), x.dtype)
    return x.to(device=model_device(model), dtype=dtype)


def site_features(
    x: torch.Tensor, model: nn.Module | None, site: str, *, batch_size: int = 1024
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Flattened (n, d) features at ``site`` and the per-sample shape there.

    ``model`` must already be a :func:`frozen_copy` for a layer site.
    """
    if site == INPUT:
        return x.reshape(x.shape[0], -1), tuple(x.shape[1:])
    if model is None:
        raise ValueError(f"site={site!r} needs a model")
    x = to_model(x, model)
    shape = site_shape(model, x, site)
    return features(model, x, site, batch_size=batch_size), shape


def prepare_site(
    model: nn.Module | None, site: str, x: torch.Tensor, rank: int | None, floor: Floor
) -> tuple[nn.Module | None, tuple[int, ...]]:
    """Validate site/rank/floor, and return the frozen model copy and the sample shape at the site."""
    if model is not None:
        check_model(model)
    check_site(site, model)
    check_floor(floor)
    if site == INPUT:
        shape = tuple(x.shape[1:])
        check_rank(rank, math.prod(shape))
        return (None if model is None else frozen_copy(model)), shape
    assert model is not None  # check_site demands a model for a layer site
    copy = frozen_copy(model)
    shape = site_shape(copy, to_model(x[:1], copy), site)
    check_rank(rank, math.prod(shape))
    return copy, shape


def class_counts(labels: torch.Tensor) -> dict[int, int]:
    """Class -> number of rows, for the classes present."""
    values, counts = torch.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def signal_basis(feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    r"""Orthonormal (d, k) basis of the span of :math:`\mu_c - \bar\mu` (source class means at the site).

    The class means of ``feats`` grouped by ``labels``, handed to :func:`signal_basis_from_means`.
    ``None`` with one class.
    """
    classes = torch.unique(labels)
    if classes.numel() < 2:
        return None
    f = feats.double()
    return signal_basis_from_means(torch.stack([f[labels == c].mean(0) for c in classes]))


def signal_basis_from_means(means: torch.Tensor) -> torch.Tensor | None:
    r"""Orthonormal (d, k) basis of the span of :math:`\mu_c - \bar\mu` for class means ``(K, d)``.

    :math:`\bar\mu` is the mean of the class means; the span equals that of all pairwise differences
    :math:`\mu_c - \mu_{c'}` whatever centre is used, so k <= K - 1. Directions whose singular value is
    below round-off (``max(K, d) · eps · σ_1``) are dropped. ``None`` with fewer than 2 classes or when
    all means coincide.
    """
    if means.shape[0] < 2:
        return None
    m = means.double()
    centred = m - m.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    if float(s[0]) == 0.0:
        return None
    keep = s > max(centred.shape) * _EPS64 * float(s[0])
    return vh[keep].T.contiguous()


def psd_rows(matrix: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
    r"""Rows R with :math:`R^\top R = B\,(A)_+\,B^\top` for a symmetric A (float64; B = I by default).

    :math:`(A)_+ = V \max(\Lambda, 0) V^\top` is the positive part: the eigenvalues of A clipped at 0,
    i.e. the nearest PSD matrix in Frobenius norm. Eigenvalues at round-off level (``≤ d · eps ·
    max|λ|``, d the dimension of the space the rows live in) are dropped, so a rank-deficient A gives
    exactly as many rows as it has clearly positive eigenvalues. ``basis`` (d, m) with orthonormal
    columns maps rows computed in an m-dimensional subspace back to R^d.
    """
    a = matrix.double()
    d = a.shape[0] if basis is None else basis.shape[0]
    values, vectors = torch.linalg.eigh(0.5 * (a + a.T))
    scale = float(values.abs().max()) if values.numel() else 0.0
    keep = values > d * _EPS64 * scale
    if basis is not None:
        vectors = basis.double() @ vectors
    return (vectors[:, keep] * values[keep].sqrt()).T


def positive_part_rows(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    r"""Rows R with :math:`R^\top R = (P^\top P - N^\top N)_+` (float64; see :func:`psd_rows`).

    When d exceeds the number of rows of ``[P; N]`` the difference is eigendecomposed in an orthonormal
    basis of their row span (where its whole range lies); otherwise the d×d matrix is formed.
    """
    p, n = pos.double(), neg.double()
    d = p.shape[1]
    stacked = torch.cat([p, n])
    if stacked.shape[0] >= d:
        return psd_rows(p.T @ p - n.T @ n)
    basis, _ = torch.linalg.qr(stacked.T, mode="reduced")
    pp, nn_ = p @ basis, n @ basis
    return psd_rows(pp.T @ pp - nn_.T @ nn_, basis)


def gram_rows(gram: torch.Tensor) -> torch.Tensor:
    r"""d rows R with :math:`R^\top R = G` for a PSD (d, d) matrix G given by its entries (float64).

    :math:`R = (V \Lambda^{1/2})^\top` from the eigendecomposition :math:`G = V \Lambda V^\top`. A PSD
    matrix's negative eigenvalues are round-off of size ~ d·eps·λ_max and are set to 0.
    """
    g = gram.double()
    values, vectors = torch.linalg.eigh(0.5 * (g + g.T))
    return (vectors * values.clamp(min=0.0).sqrt()).T


def compress_rows(rows: torch.Tensor) -> torch.Tensor:
    r"""At most d rows R' with :math:`R'^\top R' = R^\top R` (through the d×d Gram matrix when N > d)."""
    r = rows.double()
    n, d = r.shape
    if n <= d:
        return r
    return gram_rows(r.T @ r)


def estimate_from_rows(
    rows: torch.Tensor,
    *,
    n_data: int,
    site: str,
    shape: tuple[int, ...],
    estimator: str,
    counts: Mapping[str, int],
    rank: int | None,
    floor: Floor,
    signal: torch.Tensor | None,
    dtype: torch.dtype,
) -> NuisanceEstimate:
    r"""The estimate :math:`\hat\Sigma = R^\top R` (rows already carry their weights).

    This is the one "statistics → estimate" step every estimator ends in, single-process or from
    all-reduced sufficient statistics
    (:func:`~shiftlab.pmh._estimators_stats_final.estimate_from_statistics`).
    An estimate from ``n_data`` samples has at most ``L = min(d, n_data)`` non-zero eigenvalues (every
    estimator's Σ is a sum of at most that many independent outer products), so its spectrum keeps
    exactly L values: rows are compressed to at most d (exact), reduced to their top L singular
    directions when more remain (what is dropped is round-off), padded with zero rows when fewer (the
    zeros are real eigenvalues of the estimate, and the eigengap at the last non-zero eigenvalue must be
    computable), then handed to ``from_second_moment_samples`` scaled by :math:`\sqrt{L}` so that its
    uniform 1/L weights give back :math:`R^\top R`.
    """
    r = compress_rows(rows)
    d = r.shape[1]
    target_len = max(min(d, n_data), 1)
    if r.shape[0] > target_len:
        _, s, vh = torch.linalg.svd(r, full_matrices=False)
        r = s[:target_len].unsqueeze(1) * vh[:target_len]
    elif r.shape[0] < target_len:
        r = torch.cat([r, r.new_zeros(target_len - r.shape[0], d)])
    if float(r.abs().max()) == 0.0:
        raise ValueError(
            f"the {estimator} estimate is exactly zero at site {site!r}: the data show no displacement "
            "to estimate"
        )
    if rank is not None:
        singular = torch.linalg.svdvals(r)
        nonzero = int((singular > max(r.shape) * _EPS64 * float(singular[0])).sum())
        if rank > nonzero:
            raise ValueError(
                f"rank={rank} exceeds the {nonzero} non-zero eigenvalue(s) of the {estimator} estimate; "
                f"choose rank <= {nonzero} or rank=None"
            )
    estimate = from_second_moment_samples(
        r * math.sqrt(r.shape[0]),
        site=site,
        shape=shape,
        estimator=estimator,
        counts=counts,
        rank=rank,
        floor=floor,
        signal=signal,
    )
    return estimate.to(estimate.factor.device, dtype)


def result_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
