import numpy as np
import pytest

from shiftlab.pmh._deploy_metric import METRICS, DeployMetric
from shiftlab.pmh._frozen import FrozenConfig, _fit, _metric_scores, evaluate_frozen
from shiftlab.pmh._verdict import VerdictConfig


def _planted(n: int = 600, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Classes separated on axes 0-1; the deploy site adds a large label-free nuisance on axis 2."""
    rng = np.random.default_rng(seed)
    ys, yt = rng.integers(0, 3, n), rng.integers(0, 3, n)
    means = np.array([[0, 0, 0, 0], [2, 0, 0, 0], [0, 2, 0, 0]], dtype=float)
    # at the source, class 1 also sits high on axis 2: a shortcut the deploy nuisance breaks
    xs = means[ys] + 0.6 * rng.normal(size=(n, 4)) + np.outer(ys == 1, [0, 0, 1.5, 0])
    xt = means[yt] + 0.6 * rng.normal(size=(n, 4)) + np.outer(rng.normal(size=n) * 3.0, [0, 0, 1, 0])
    return xs, ys, xt, yt


def test_planted_nuisance_ships_and_the_holdout_is_disjoint() -> None:
    xs, ys, xt, yt = _planted()
    config = FrozenConfig(rank=1, strengths=(1.0, 100.0))
    report = evaluate_frozen(
        xs, ys, xt, yt, config=config, verdict_config=VerdictConfig(source_tolerance=0.05)
    )
    acc = {arm: np.mean(v) for arm, v in report.deploy_accuracy.items()}
    assert acc["matched"] > acc["baseline"] + 0.05
    assert acc["matched"] > acc["isotropic"] and acc["matched"] > acc["wrong"]
    assert report.verdict.verdict == "SHIP"
    for hashes in report.split_hashes:
        assert len({hashes["target_pool"], hashes["target_val"], hashes["target_holdout"]}) == 3
    assert report.to_dict()["verdict"]["verdict"] == "SHIP"
    # removing the source shortcut costs about 3 source points: the default 2-point tolerance refuses it
    strict = evaluate_frozen(xs, ys, xt, yt, config=config)
    assert strict.verdict.verdict == "DO NOT SHIP"
    assert strict.verdict.reasons[0].startswith("source validation drops")


def test_no_shift_never_ships() -> None:
    rng = np.random.default_rng(1)
    ys, yt = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    means = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0]], dtype=float)
    xs = means[ys] + rng.normal(size=(500, 3))
    xt = means[yt] + rng.normal(size=(500, 3))
    report = evaluate_frozen(xs, ys, xt, yt, config=FrozenConfig(rank=1, strengths=(1.0, 10.0)))
    assert report.verdict.verdict != "SHIP"


def test_bad_input() -> None:
    xs, ys, xt, yt = _planted(200)
    with pytest.raises(ValueError, match="features"):
        evaluate_frozen(xs, ys, xt[:, :3], yt)
    with pytest.raises(TypeError, match="integers"):
        evaluate_frozen(xs, ys.astype(float), xt, yt)
    bad = xt.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_frozen(xs, ys, bad, yt)
    with pytest.raises(ValueError, match="share"):
        evaluate_frozen(xs, np.zeros(200, dtype=int), xt, np.ones(200, dtype=int))
    with pytest.raises(ValueError, match="holdout"):
        FrozenConfig(pool_fraction=0.7, val_fraction=0.3)
    with pytest.raises(ValueError, match="subspace"):
        evaluate_frozen(xs, ys, xt, yt, kind="subspace", config=FrozenConfig(use_target_labels=False))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_metric_scores_are_the_heads_probabilities(n_classes: int) -> None:
    # oracle: scikit-learn's own predict_proba, with labels that are not 0..C-1
    rng = np.random.default_rng(3)
    y = 5 + 2 * rng.integers(0, n_classes, 300)
    x = rng.normal(size=(300, 3)) + (y[:, None] - 5) / 2
    head = _fit(x, y, 1.0)
    proba = head.predict_proba(x)
    col = np.searchsorted(head.classes_, y)
    want_log = np.log(proba[np.arange(300), col])
    np.testing.assert_allclose(_metric_scores(head, x, y, METRICS["neg_log_loss"]), want_log, rtol=1e-10)
    want_brier = -((proba - np.eye(n_classes)[col]) ** 2).sum(axis=1)
    np.testing.assert_allclose(_metric_scores(head, x, y, METRICS["neg_brier"]), want_brier, rtol=1e-10)
    assert np.array_equal(_metric_scores(head, x, y, METRICS["accuracy"]), head.predict(x) == y)


def test_metric_decides_the_frozen_verdict() -> None:
    xs, ys, xt, yt = _planted()
    ys, yt = ys * 3 + 1, yt * 3 + 1  # labels 1, 4, 7: the logit columns must follow head.classes_
    config = FrozenConfig(rank=1, strengths=(1.0, 100.0))
    loose = VerdictConfig(source_tolerance=0.05)
    default = evaluate_frozen(xs, ys, xt, yt, config=config, verdict_config=loose)
    # accuracy through the logits path (a user metric) gives the same scores, λ and verdict
    same = DeployMetric("argmax", lambda z, y: (z.argmax(1) == y).double())
    via_logits = evaluate_frozen(xs, ys, xt, yt, config=config, verdict_config=loose, metric=same)
    assert via_logits.deploy_metric == default.deploy_accuracy
    assert via_logits.chosen_strength == default.chosen_strength
    assert via_logits.verdict.verdict == default.verdict.verdict == "SHIP"
    nll = evaluate_frozen(xs, ys, xt, yt, config=config, verdict_config=loose, metric="neg_log_loss")
    assert nll.metric == "neg_log_loss" and nll.deploy_accuracy == default.deploy_accuracy
    mean = {arm: np.mean(v) for arm, v in nll.deploy_metric.items()}
    assert all(v < 0 for v in mean.values()) and mean["matched"] > mean["baseline"]
    assert "deploy neg_log_loss" in nll.tables()[0].columns


def test_probability_metrics_need_every_deploy_class_in_the_source() -> None:
    xs, ys, xt, yt = _planted()
    yt = yt.copy()
    yt[:20] = 9
    evaluate_frozen(
        xs, ys, xt, yt, config=FrozenConfig(rank=1, strengths=(1.0,), seeds=(0,))
    )  # accuracy: fine
    with pytest.raises(ValueError, match=r"missing: \[9\]"):
        evaluate_frozen(xs, ys, xt, yt, metric="neg_log_loss")
