"""Confusion pairs predicted from class distances, scored against what actually happens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shiftlab.functional._checks import _check_int
from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.stats import spearman

__all__ = ["PairScore", "confusion_matrix", "pair_confusion_rates", "score_pairs"]


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts: row = true class, column = predicted class.

    Examples
    --------
    >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
    tensor([[1, 1],
            [0, 1]])
    """
    c = _check_int(n_classes, "n_classes", low=2)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError("predictions and labels must be 1-D of the same length")
    for name, t in (("predictions", predictions), ("labels", labels)):
        if bool((t < 0).any()) or bool((t >= c).any()):
            raise ValueError(f"{name} must lie in [0, {c})")
    flat = labels.to(torch.int64).cpu() * c + predictions.to(torch.int64).cpu()
    return torch.bincount(flat, minlength=c * c).reshape(c, c)


def pair_confusion_rates(confusion: ArrayLike) -> torch.Tensor:
    r"""Symmetric pair confusion rate :math:`R_{ab} = (M_{ab} + M_{ba}) / (n_a + n_b)`, zero diagonal.

    :math:`M` is the confusion matrix and :math:`n_a = \sum_b M_{ab}` the samples of class :math:`a`: the
    share of the two classes' samples predicted as the other one.

    Examples
    --------
    >>> pair_confusion_rates([[8, 2, 0], [1, 9, 0], [0, 0, 10]])
    tensor([[0.0000, 0.1500, 0.0000],
            [0.1500, 0.0000, 0.0000],
            [0.0000, 0.0000, 0.0000]], dtype=torch.float64)
    """
    m = as_tensor(confusion, name="confusion", ndim=2).to(torch.float64)
    if m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"confusion must be square (C, C) with C >= 2; got {tuple(m.shape)}")
    if bool((m < 0).any()):
        raise ValueError("confusion counts must be nonnegative")
    n = m.sum(dim=1)
    if bool((n == 0).any()):
        raise ValueError(f"classes {torch.nonzero(n == 0).flatten().tolist()} have no samples")
    rates = (m + m.T) / (n[:, None] + n[None, :])
    rates.fill_diagonal_(0.0)
    return rates


@dataclass(frozen=True)
class PairScore:
    """How well small class distances predict large pair rates (confusion or attack flips).

    Attributes
    ----------
    spearman
        Spearman correlation between distance and rate over all class pairs with a defined rate; the
        prediction works when it is negative. ``None`` when undefined (see ``note``).
    mantel_p
        One-sided permutation p-value for a negative correlation, permuting the class labels of the rate
        matrix (a Mantel test: pairs sharing a class are not independent, so pair-level tests would be
        too liberal). ``None`` when undefined.
    precision_at_k
        Share of the ``k`` closest pairs whose rate is positive and at least the ``k``-th largest rate.
    k
        Number of predicted pairs.
    pairs
        All pairs ``(a, b)``, ``a < b``, sorted by distance (closest first).
    distance, rate
        Their distance and rate.
    note
        Why a score is ``None``, else empty.
    """

    spearman: float | None
    mantel_p: float | None
    precision_at_k: float | None
    k: int
    pairs: tuple[tuple[int, int], ...]
    distance: tuple[float, ...]
    rate: tuple[float, ...]
    note: str


def score_pairs(
    distances: ArrayLike, rates: ArrayLike, *, k: int = 5, n_permutations: int = 999, seed: int = 0
) -> PairScore:
    r"""Score the prediction "the closest class pairs are the most confused" over all pairs.

    Parameters
    ----------
    distances
        ``(C, C)`` class distances (e.g. :attr:`ClassGeometry.distances`).
    rates
        ``(C, C)`` symmetric pair rates (:func:`pair_confusion_rates`, or FGSM pair vulnerability); NaN
        entries mark undefined pairs and are left out (the Mantel p-value is then not computed).
    k
        Number of predicted pairs for precision@k, ``1 <= k <= C (C - 1) / 2``.
    n_permutations
        Class relabellings of the Mantel test.
    seed
        Seed of the relabellings.

    Returns
    -------
    PairScore

    Examples
    --------
    >>> import torch
    >>> d = torch.tensor([[0.0, 0.1, 0.9, 0.8], [0.1, 0.0, 0.7, 0.6], [0.9, 0.7, 0.0, 0.2],
    ...                   [0.8, 0.6, 0.2, 0.0]])
    >>> r = 0.5 - d / 2
    >>> r.fill_diagonal_(0.0)  # doctest: +ELLIPSIS
    tensor(...)
    >>> s = score_pairs(d, r, k=2, n_permutations=99)
    >>> s.spearman, s.precision_at_k, s.pairs[:2]
    (-1.0, 1.0, ((0, 1), (2, 3)))
    """
    d = as_tensor(distances, name="distances", ndim=2).to(torch.float64).cpu()
    r = as_tensor(rates, name="rates", ndim=2, finite=False).to(torch.float64).cpu()
    c = d.shape[0]
    if d.shape != (c, c) or r.shape != (c, c) or c < 2:
        raise ValueError(
            f"distances and rates must both be (C, C) with C >= 2; got {tuple(d.shape)}, {tuple(r.shape)}"
        )
    if bool(torch.isinf(r).any()):
        raise ValueError("rates must be finite or NaN (undefined)")
    n_pairs = c * (c - 1) // 2
    k = _check_int(k, "k", low=1, high=n_pairs)
    n_permutations = _check_int(n_permutations, "n_permutations", low=1)
    iu = torch.triu_indices(c, c, offset=1)
    dv, rv = d[iu[0], iu[1]], r[iu[0], iu[1]]
    order = torch.argsort(dv, stable=True)
    pairs = tuple((int(iu[0, i]), int(iu[1, i])) for i in order)
    defined = ~torch.isnan(rv)
    notes = []
    rho: float | None = None
    mantel: float | None = None
    if int(defined.sum()) < 3:
        notes.append("fewer than 3 pairs with a defined rate")
    elif float(rv[defined].std()) == 0.0:
        notes.append("every pair has the same rate (e.g. no confusion at all): correlation undefined")
    else:
        rho = float(spearman(dv[defined], rv[defined]))
        if bool(defined.all()):
            gen = torch.Generator().manual_seed(seed)
            perms = torch.argsort(torch.rand(n_permutations, c, generator=gen), dim=1)
            permuted = r[perms[:, :, None], perms[:, None, :]][:, iu[0], iu[1]]
            null = spearman(dv.expand_as(permuted), permuted)
            mantel = (1 + int((null <= rho + 1e-12).sum())) / (1 + n_permutations)
        else:
            notes.append("some pair rates are undefined: Mantel test skipped")
    precision: float | None = None
    if bool(defined.all()):
        threshold = torch.sort(rv, descending=True).values[k - 1]
        top = rv[order[:k]]
        precision = float(((top >= threshold) & (top > 0)).to(torch.float64).mean())
    else:
        notes.append("precision@k needs every pair rate")
    return PairScore(
        spearman=rho,
        mantel_p=mantel,
        precision_at_k=precision,
        k=k,
        pairs=pairs,
        distance=tuple(float(v) for v in dv[order]),
        rate=tuple(float(v) for v in rv[order]),
        note="; ".join(notes),
    )
