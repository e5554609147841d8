r"""Cross-domain nuisance estimators: D1 ``subspace`` and D4 ``domain``.

Both compare a labelled source sample with a target sample at a perturbation site and keep the
**uncentred** displacement, so that the per-class mean shift is part of the nuisance. Rows are never
paired by index: class-aligned statistics are computed in closed form from per-class means and
covariances.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators_common import (
    Floor,
    check_int,
    check_labels,
    check_positive,
    check_samples,
    class_counts,
    estimate_from_rows,
    positive_part_rows,
    prepare_site,
    result_dtype,
    signal_basis,
    site_features,
    to_model,
)


def check_pair(source: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Source and target samples with the same per-sample shape."""
    xs = check_samples(source, "source")
    xt = check_samples(target, "target")
    if xs.shape[1:] != xt.shape[1:]:
        raise ValueError(
            f"source and target samples differ in shape: {tuple(xs.shape[1:])} vs {tuple(xt.shape[1:])}"
        )
    return xs, xt


def source_classes(counts: dict[int, int]) -> dict[int, int]:
    """The source class counts, checked to hold at least 2 classes."""
    if len(counts) < 2:
        raise ValueError(
            f"source_labels hold one class ({next(iter(counts))}): class-aligned estimation needs at least 2 "
            "classes; for a single population use domain(...) without labels"
        )
    return counts


def shared_classes(source_counts: dict[int, int], target_counts: dict[int, int]) -> list[int]:
    """Sorted classes present in both domains (``ValueError`` when there is none)."""
    shared = sorted(set(source_counts) & set(target_counts))
    if not shared:
        raise ValueError(
            f"source and target share no class: source classes {sorted(source_counts)}, target classes "
            f"{sorted(target_counts)}"
        )
    return shared


def subspace(
    source: Any,
    source_labels: Any,
    target: Any,
    target_labels: Any,
    *,
    model: nn.Module | None = None,
    site: str = "input",
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceEstimate:
    r"""D1: second moment of class-aligned cross-domain differences over **all** same-class pairs.

    With source rows :math:`s` and target rows :math:`t` at the site, classes :math:`c` present in both
    domains, target class proportions :math:`\pi_c` (over those classes), class means
    :math:`\mu_{s,c}, \mu_{t,c}`, :math:`\Delta\mu_c = \mu_{t,c} - \mu_{s,c}` and population (1/n)
    covariances :math:`C_{s,c}, C_{t,c}`,

    .. math::

        \hat\Sigma = \sum_c \pi_c \, \frac{1}{n_{s,c} n_{t,c}} \sum_{i \in s,c}\sum_{j \in t,c}
        (t_j - s_i)(t_j - s_i)^\top
        = \sum_c \pi_c \left[\Delta\mu_c \Delta\mu_c^\top + C_{t,c} + C_{s,c}\right],

    computed exactly in closed form (from weighted rows, never by pairing rows by index). The per-class
    mean shift is included: it is the systematic part of the deploy displacement.

    Parameters
    ----------
    source, source_labels
        Labelled source samples ``(n_s, *shape)`` and integer labels ``(n_s,)`` (at least 2 classes).
    target, target_labels
        Labelled target samples ``(n_t, *shape)`` and integer labels ``(n_t,)``. Target rows of classes
        absent from the source are not used (``counts["n_target"]`` says how many were).
    model
        Needed when ``site`` is a layer; a frozen deep copy is run in eval mode (the model is not touched).
    site
        ``"input"`` or a layer name of ``model``.
    rank
        Number of low-rank directions (``None``: smallest rank holding 95% of the trace, at most 64).
    floor
        Isotropic variance added to Σ, or ``"residual"`` (the discarded tail mass spread over d).

    Returns
    -------
    NuisanceEstimate
        With ``signal`` = orthonormal basis of the source class-mean differences at the site, and counts
        ``n_source``, ``n_target``, ``n_classes``, ``n_pairs``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> xs = torch.randn(200, 5, generator=g)
    >>> ys = torch.arange(200) % 2
    >>> xt = torch.randn(200, 5, generator=g) + torch.tensor([3.0, 0, 0, 0, 0])
    >>> est = subspace(xs, ys, xt, ys, rank=1)
    >>> est.basis()[:, 0].abs().argmax().item()
    0
    """
    xs, xt = check_pair(source, target)
    ys = check_labels(source_labels, xs.shape[0], "source_labels")
    yt = check_labels(target_labels, xt.shape[0], "target_labels")
    copy, shape = prepare_site(model, site, xs, rank, floor)
    source_counts = source_classes(class_counts(ys))
    shared = shared_classes(source_counts, class_counts(yt))
    fs, _ = site_features(xs, copy, site)
    ft, _ = site_features(xt, copy, site)
    fs64, ft64 = fs.double().cpu(), ft.double().cpu()
    n_t_shared = sum(int((yt == c).sum()) for c in shared)
    rows = []
    n_pairs = n_source_used = 0
    for c in shared:
        s_c, t_c = fs64[ys == c], ft64[yt == c]
        pi = t_c.shape[0] / n_t_shared
        mu_s, mu_t = s_c.mean(0), t_c.mean(0)
        rows.append(math.sqrt(pi) * (mu_t - mu_s).unsqueeze(0))
        rows.append(math.sqrt(pi / t_c.shape[0]) * (t_c - mu_t))
        rows.append(math.sqrt(pi / s_c.shape[0]) * (s_c - mu_s))
        n_pairs += s_c.shape[0] * t_c.shape[0]
        n_source_used += s_c.shape[0]
    counts = {
        "n_source": n_source_used,
        "n_target": n_t_shared,
        "n_classes": len(shared),
        "n_pairs": n_pairs,
    }
    return estimate_from_rows(
        torch.cat(rows),
        n_data=n_source_used + n_t_shared,
        site=site,
        shape=shape,
        estimator="subspace",
        counts=counts,
        rank=rank,
        floor=floor,
        signal=signal_basis(fs64, ys),
        dtype=result_dtype(fs, ft),
    )


def centred_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows whose outer products sum to the unbiased (n - 1) covariance."""
    return (x - x.mean(0)) / math.sqrt(x.shape[0] - 1)


def _class_aligned_rows(
    fs: torch.Tensor, ys: torch.Tensor, ft: torch.Tensor, yt: torch.Tensor, min_per_class: int
) -> tuple[list[torch.Tensor], list[int], int, int]:
    """Rows of Σ_c π_c [Δμ_c Δμ_cᵀ + (C_t,c − C_s,c)_+] over classes with enough rows in both domains."""
    source_counts, target_counts = class_counts(ys), class_counts(yt)
    used = used_classes(source_counts, target_counts, min_per_class)
    n_t_used = sum(target_counts[c] for c in used)
    rows: list[torch.Tensor] = []
    for c in used:
        s_c, t_c = fs[ys == c], ft[yt == c]
        root_pi = math.sqrt(target_counts[c] / n_t_used)
        rows.append(root_pi * (t_c.mean(0) - s_c.mean(0)).unsqueeze(0))
        rows.append(root_pi * positive_part_rows(centred_rows(t_c), centred_rows(s_c)))
    n_s_used = sum(source_counts[c] for c in used)
    return rows, used, n_s_used, n_t_used


def used_classes(
    source_counts: dict[int, int], target_counts: dict[int, int], min_per_class: int
) -> list[int]:
    """Sorted classes with at least ``min_per_class`` rows in both domains."""
    return [
        c
        for c in sorted(set(source_counts) & set(target_counts))
        if source_counts[c] >= min_per_class and target_counts[c] >= min_per_class
    ]


def check_usable(
    used: list[int],
    needed: int,
    what: str,
    source_counts: dict[int, int],
    target_counts: dict[int, int],
    min_per_class: int,
) -> None:
    """``ValueError`` when fewer than ``needed`` classes are usable, with the rows per class."""
    if len(used) >= needed:
        return
    s, t = source_counts, target_counts
    per_class = ", ".join(f"{c}: {s.get(c, 0)}/{t.get(c, 0)}" for c in sorted(set(s) | set(t)))
    raise ValueError(
        f"too few rows for class-aligned estimation: {what}, giving {len(used)} usable class(es) "
        f"(need {needed}); rows per class (source/target): {per_class}; each used class needs "
        f">= {min_per_class} in both"
    )


def confident_rows(n_confident: int, n_target: int, confidence: float) -> str:
    """What the pseudo-labelling kept, for error messages."""
    return f"{n_confident} of {n_target} target rows have max softmax >= {confidence}"


def confident_labels(
    copy: nn.Module, xt: torch.Tensor, confidence: float, batch_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels argmax softmax(model(x)) and the mask of rows with max softmax >= confidence."""
    probs = []
    with torch.no_grad():
        for start in range(0, xt.shape[0], batch_size):
            logits = copy(to_model(xt[start : start + batch_size], copy))
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"pseudo-labels need a model returning (n, classes >= 2) logits; got {got}")
            probs.append(torch.softmax(logits.double(), dim=1).cpu())
    p = torch.cat(probs)
    top, labels = p.max(dim=1)
    return labels, top >= confidence


def domain(
    source: Any,
    target: Any,
    source_labels: Any = None,
    target_labels: Any = None,
    *,
    model: nn.Module | None = None,
    site: str = "input",
    confidence: float = 0.9,
    min_per_class: int = 2,
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceEstimate:
    r"""D4: deploy nuisance from source and target batches, class-aligned when labels allow.

    With unbiased class covariances :math:`C_{\cdot,c}`, class-mean shifts
    :math:`\Delta\mu_c = \mu_{t,c} - \mu_{s,c}` and target class proportions :math:`\pi_c` over the
    classes used (present in both domains with at least ``min_per_class`` rows each):

    - **labelled** (``target_labels`` given):
      :math:`\hat\Sigma = \sum_c \pi_c \left[\Delta\mu_c\Delta\mu_c^\top + (C_{t,c} - C_{s,c})_+\right]`;
    - **pseudo-labelled** (no target labels, a ``model``): the same formula with target labels
      :math:`\arg\max \operatorname{softmax}(\text{model}(t))`, keeping only rows whose max softmax is
      ``>= confidence`` (``counts["n_target_confident"]``); at least 2 usable classes are required;
    - **moments** (no target labels, no model):
      :math:`\hat\Sigma = \Delta\mu\,\Delta\mu^\top + (C_t - C_s)_+` on the marginals.

    :math:`(A)_+ = V\max(\Lambda, 0)V^\top` is the positive part of the symmetric difference (its
    eigenvalues clipped at 0: the nearest PSD matrix), a defined projection of the estimate: variance the
    target *lost* is not a displacement the model must be insensitive to. The mean shift is always kept.
    Rows are never paired by index. Measured on MNIST → UCI digits, the class-conditional mean-shift term
    carries most of the useful signal; the label-free moment estimate also picks up class-discriminative
    directions when class proportions or class geometry differ between sites, so prefer labels or a model.

    Parameters
    ----------
    source, target
        Samples ``(n_s, *shape)`` and ``(n_t, *shape)``, at least 2 rows each.
    source_labels
        Integer labels of ``source``; required with ``target_labels`` or a ``model``. When given, the
        estimate's ``signal`` holds the source class-mean-difference directions.
    target_labels
        Integer labels of ``target`` (labelled mode).
    model
        Classifier returning logits whose class indices are those of ``source_labels``; gives
        pseudo-labels when ``target_labels`` is ``None``, and the features when ``site`` is a layer. A
        frozen deep copy is used.
    site
        ``"input"`` or a layer name of ``model``.
    confidence
        Minimum max-softmax probability of a pseudo-labelled row, in (0, 1].
    min_per_class
        Minimum rows of a class in each domain for it to be used (>= 2: a covariance needs 2 rows).
    rank, floor
        As in :func:`subspace`.

    Returns
    -------
    NuisanceEstimate
        ``counts``: ``n_source``, ``n_target`` (rows used), ``n_classes`` (0 in moments mode), and
        ``n_target_labelled`` or ``n_target_confident``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> xs = torch.randn(500, 4, generator=g)
    >>> xt = torch.randn(500, 4, generator=g) + torch.tensor([0.0, 2.0, 0.0, 0.0])
    >>> est = domain(xs, xt, rank=1)
    >>> est.basis()[:, 0].abs().argmax().item()
    1
    """
    xs, xt = check_pair(source, target)
    if xs.shape[0] < 2 or xt.shape[0] < 2:
        raise ValueError(f"domain needs >= 2 rows per domain; got source {xs.shape[0]}, target {xt.shape[0]}")
    ys = None if source_labels is None else check_labels(source_labels, xs.shape[0], "source_labels")
    yt = None if target_labels is None else check_labels(target_labels, xt.shape[0], "target_labels")
    min_per_class = check_int(min_per_class, "min_per_class", low=2)
    confidence = check_positive(confidence, "confidence")
    if confidence > 1:
        raise ValueError(f"confidence must be in (0, 1]; got {confidence}")
    if ys is None and (yt is not None or model is not None):
        raise ValueError(
            "class-aligned estimation (target_labels or a model for pseudo-labels) needs source_labels; "
            "without them only the moment fallback (no labels, no model) applies"
        )
    copy, shape = prepare_site(model, site, xs, rank, floor)
    if ys is not None:
        source_classes(class_counts(ys))
        if yt is not None:
            shared_classes(class_counts(ys), class_counts(yt))
    fs, _ = site_features(xs, copy, site)
    ft, _ = site_features(xt, copy, site)
    fs64, ft64 = fs.double().cpu(), ft.double().cpu()
    signal = None if ys is None else signal_basis(fs64, ys)
    counts: dict[str, int]
    if ys is not None and (yt is not None or copy is not None):
        if yt is not None:
            labels, keep, key = yt, torch.ones_like(yt, dtype=torch.bool), "n_target_labelled"
        else:
            assert copy is not None
            labels, keep = confident_labels(copy, xt, confidence)
            key = "n_target_confident"
        rows, used, n_s, n_t = _class_aligned_rows(fs64, ys, ft64[keep], labels[keep], min_per_class)
        check_usable(
            used,
            1 if yt is not None else 2,
            confident_rows(int(keep.sum()), xt.shape[0], confidence)
            if yt is None
            else f"{xt.shape[0]} labelled target rows",
            class_counts(ys),
            class_counts(labels[keep]),
            min_per_class,
        )
        counts = {"n_source": n_s, "n_target": n_t, "n_classes": len(used), key: int(keep.sum())}
    else:
        mean_shift = (ft64.mean(0) - fs64.mean(0)).unsqueeze(0)
        rows = [mean_shift, positive_part_rows(centred_rows(ft64), centred_rows(fs64))]
        n_s, n_t = xs.shape[0], xt.shape[0]
        counts = {"n_source": n_s, "n_target": n_t, "n_classes": 0}
    return estimate_from_rows(
        torch.cat(rows),
        n_data=n_s + n_t,
        site=site,
        shape=shape,
        estimator="domain",
        counts=counts,
        rank=rank,
        floor=floor,
        signal=signal,
        dtype=result_dtype(fs, ft),
    )
