"""The learning-rate search's record per candidate, and the three rules that pick one candidate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shiftlab.functional._convert import ArrayLike, as_tensor

__all__ = ["LR_CRITERIA", "LRCandidate", "LRCriterion", "choose_lr", "h0_coefficient_of_variation"]

LRCriterion = Literal["val_accuracy", "val_loss", "h0_cv"]
LR_CRITERIA: tuple[str, ...] = ("val_accuracy", "val_loss", "h0_cv")


@dataclass(frozen=True)
class LRCandidate:
    """One learning rate of the search.

    Attributes
    ----------
    lr
        The learning rate.
    h0_trajectory
        Validation H0 after each search epoch (up to the divergence, if any).
    h0_cv
        :func:`h0_coefficient_of_variation` of the trajectory; ``None`` where it is undefined (diverged,
        or every H0 is 0: all classes share one direction).
    val_accuracy, val_loss
        Validation accuracy and mean cross-entropy after the last search epoch (``nan`` and ``inf`` when
        training diverged).
    diverged
        The validation loss became non-finite; such a candidate is never chosen.
    """

    lr: float
    h0_trajectory: tuple[float, ...]
    h0_cv: float | None
    val_accuracy: float
    val_loss: float
    diverged: bool = False


def h0_coefficient_of_variation(trajectory: ArrayLike) -> float | None:
    r"""Coefficient of variation :math:`s / \bar h` of an H0 trajectory (the original project's LR score).

    :math:`\bar h` is the mean and :math:`s` the sample standard deviation (:math:`n - 1` in the
    denominator) of the :math:`n \ge 2` values. ``None`` when :math:`\bar h = 0` (CV is 0/0 there: a
    network whose classes all share one direction, e.g. a dead one, has a perfectly "stable" H0 of 0).

    Examples
    --------
    >>> round(h0_coefficient_of_variation([1.0, 2.0, 3.0]), 6)
    0.5
    >>> h0_coefficient_of_variation([0.0, 0.0]) is None
    True
    """
    h = as_tensor(trajectory, name="trajectory", ndim=1, min_rows=2)
    if bool((h < 0).any()):
        raise ValueError("an H0 trajectory holds total persistences, which are nonnegative")
    mean = float(h.mean())
    if mean == 0.0:
        return None
    return float(h.std()) / mean


def choose_lr(candidates: Sequence[LRCandidate], criterion: LRCriterion) -> float:
    """The learning rate a selection rule picks from the search.

    * ``"val_accuracy"``: highest validation accuracy, ties broken by lower validation loss;
    * ``"val_loss"``: lowest validation loss (the free baseline);
    * ``"h0_cv"``: smallest H0 coefficient of variation (the original project's rule).

    Diverged candidates are never chosen, nor candidates whose H0 CV is undefined under ``"h0_cv"``.

    Raises
    ------
    ValueError
        Unknown criterion (the valid ones are listed), no candidates, or none eligible.

    Examples
    --------
    >>> runs = [
    ...     LRCandidate(1e-3, (1.0, 1.2), 0.13, val_accuracy=0.90, val_loss=0.31),
    ...     LRCandidate(1e-2, (2.0, 2.1), 0.03, val_accuracy=0.88, val_loss=0.35),
    ... ]
    >>> choose_lr(runs, "val_accuracy"), choose_lr(runs, "val_loss"), choose_lr(runs, "h0_cv")
    (0.001, 0.001, 0.01)
    """
    if criterion not in LR_CRITERIA:
        raise ValueError(f"unknown lr criterion {criterion!r}; valid: {', '.join(LR_CRITERIA)}")
    if not candidates:
        raise ValueError("no learning-rate candidates to choose from")
    alive = [c for c in candidates if not c.diverged]
    if criterion == "h0_cv":
        scored = [(c.h0_cv, c.lr) for c in alive if c.h0_cv is not None and math.isfinite(c.h0_cv)]
        if not scored:
            raise ValueError("no candidate has a defined H0 CV (all diverged or H0 = 0); use val_accuracy")
        return min(scored)[1]
    if not alive:
        raise ValueError("every learning-rate candidate diverged: try smaller learning rates")
    if criterion == "val_loss":
        return min(alive, key=lambda c: (c.val_loss, c.lr)).lr
    return max(alive, key=lambda c: (c.val_accuracy, -c.val_loss, -c.lr)).lr
