"""Phase 2 (LR search): the selection rules, the H0 CV, divergence, and search = prefix of phase 3."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shiftlab.topology import (
    LRCandidate,
    LRCriterion,
    PHTrainConfig,
    PHTrainer,
    choose_lr,
    h0_coefficient_of_variation,
)


def test_h0_cv_matches_numpy_and_is_undefined_at_zero(rng: np.random.Generator) -> None:
    h = rng.uniform(0.5, 3.0, size=6)
    cv = h0_coefficient_of_variation(h)
    assert cv == pytest.approx(float(np.std(h, ddof=1) / np.mean(h)), rel=1e-12)
    assert h0_coefficient_of_variation([0.0, 0.0, 0.0]) is None
    with pytest.raises(ValueError, match="nonnegative"):
        h0_coefficient_of_variation([1.0, -0.5])
    with pytest.raises(ValueError):
        h0_coefficient_of_variation([1.0])


@given(st.lists(st.floats(0.01, 100.0), min_size=2, max_size=8), st.floats(0.1, 10.0))
def test_h0_cv_is_scale_free(values: list[float], scale: float) -> None:
    a = h0_coefficient_of_variation(values)
    b = h0_coefficient_of_variation([scale * v for v in values])
    assert a is not None and b is not None and b == pytest.approx(a, rel=1e-9, abs=1e-12)


def _cand(lr: float, cv: float | None, acc: float, loss: float, diverged: bool = False) -> LRCandidate:
    return LRCandidate(lr, (1.0, 1.0), cv, acc, loss, diverged)


def test_each_rule_picks_its_own_candidate_and_skips_ineligible_ones() -> None:
    runs = [
        _cand(1e-4, 0.01, 0.50, 1.20),  # flattest H0: barely trains
        _cand(1e-3, 0.20, 0.92, 0.30),
        _cand(1e-2, 0.15, 0.92, 0.25),  # ties on accuracy, lower loss
        _cand(1e-1, None, 0.10, 2.30),  # dead network: CV undefined
        _cand(1.0, None, math.nan, math.inf, diverged=True),
    ]
    assert choose_lr(runs, "val_accuracy") == 1e-2
    assert choose_lr(runs, "val_loss") == 1e-2
    assert choose_lr(runs, "h0_cv") == 1e-4
    with pytest.raises(ValueError, match="valid: val_accuracy, val_loss, h0_cv"):
        choose_lr(runs, "accuracy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no learning-rate candidates"):
        choose_lr([], "val_loss")
    with pytest.raises(ValueError, match="every learning-rate candidate diverged"):
        choose_lr([runs[-1]], "val_accuracy")
    with pytest.raises(ValueError, match="defined H0 CV"):
        choose_lr(runs[-2:], "h0_cv")


def test_search_lr_is_phase_two_and_the_prefix_of_phase_three() -> None:
    config = PHTrainConfig(
        dataset="digits",
        epochs=2,
        lr_candidates=(3e-3, 3e-2),
        search_epochs=2,
        max_train=500,
        optimizer="sgd",
        device="cpu",
        seed=2,
    )
    report = PHTrainer(config).run(quiet=True)
    searched = PHTrainer(config).search_lr()
    assert searched == report.lr_search
    assert report.lr_by_val_loss == choose_lr(searched, "val_loss")
    assert report.lr_by_h0_cv == choose_lr(searched, "h0_cv")
    # phase 3 at the chosen rate starts exactly like that candidate's search run
    chosen = next(c for c in searched if c.lr == report.lr_chosen)
    assert [r.h0_val for r in report.epochs] == pytest.approx(list(chosen.h0_trajectory), abs=1e-12)
    assert report.epochs[-1].val_accuracy == chosen.val_accuracy
    # the optimizer matters: Adam at the same rates gives another search
    assert PHTrainer(dataclasses.replace(config, optimizer="adam")).search_lr() != searched


def test_a_diverging_rate_is_recorded_not_raised_and_never_chosen() -> None:
    config = PHTrainConfig(
        dataset="digits",
        lr_candidates=(1e-2, 1e6),
        search_epochs=2,
        max_train=300,
        optimizer="sgd",
        device="cpu",
    )
    ok, blown = PHTrainer(config).search_lr()
    assert not ok.diverged and ok.h0_cv is not None and math.isfinite(ok.val_loss)
    assert blown.diverged and blown.h0_cv is None and blown.val_loss == math.inf
    criteria: tuple[LRCriterion, ...] = ("val_accuracy", "val_loss", "h0_cv")
    for criterion in criteria:
        assert choose_lr((ok, blown), criterion) == 1e-2
