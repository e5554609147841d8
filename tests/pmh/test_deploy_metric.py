"""Deploy metrics: sklearn oracles, contract checks, λ chosen by the metric, the verdict speaks its units."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, log_loss
from torch import nn

from shiftlab.pmh._arms import run_arms
from shiftlab.pmh._arms_data import ArmsData
from shiftlab.pmh._deploy_metric import METRICS, DeployMetric, resolve_metric
from shiftlab.pmh._train_config import TrainConfig
from shiftlab.pmh._train_data import model_logits
from shiftlab.pmh._verdict import ship_verdict

D = 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _logits(n: int = 300, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    labels[: n // 2] = 0  # imbalanced, so balanced accuracy differs from accuracy
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) + 1.5 * nn.functional.one_hot(labels, c)
    return logits, labels


def test_builtin_metrics_match_sklearn() -> None:
    logits, labels = _logits()
    probs = torch.softmax(logits, dim=1).numpy()
    y = labels.numpy()
    pred = probs.argmax(1)
    assert float(METRICS["accuracy"].score(logits, labels).mean()) == pytest.approx((pred == y).mean())
    balanced = float(METRICS["balanced_accuracy"].score(logits, labels).mean())
    assert balanced == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert balanced != pytest.approx((pred == y).mean(), abs=1e-3)
    nll = float(METRICS["neg_log_loss"].score(logits, labels).mean())
    assert nll == pytest.approx(-log_loss(y, probs, labels=[0, 1, 2, 3]), abs=1e-10)
    brier = float(METRICS["neg_brier"].score(logits, labels).mean())
    onehot = np.eye(4)[y]
    assert brier == pytest.approx(-((probs - onehot) ** 2).sum(1).mean(), abs=1e-12)
    binary = torch.stack([torch.zeros(len(y)), logits[:, 1] - logits[:, 0]], dim=1)
    two = (labels > 0).long()
    p1 = torch.sigmoid(binary[:, 1]).numpy()
    expected = -2 * brier_score_loss(two.numpy(), p1)  # sklearn's binary Brier counts one class
    assert float(METRICS["neg_brier"].score(binary, two).mean()) == pytest.approx(expected, abs=1e-6)


def test_metric_contract_is_enforced() -> None:
    logits, labels = _logits(20)
    with pytest.raises(ValueError, match="one score per example"):
        DeployMetric("mean", lambda z, y: z.mean()).score(logits, labels)
    with pytest.raises(ValueError, match="non-finite"):
        DeployMetric("nan", lambda z, y: torch.full((len(y),), float("nan"))).score(logits, labels)
    with pytest.raises(ValueError, match="non-empty name"):
        DeployMetric("", lambda z, y: z[:, 0])
    with pytest.raises(TypeError, match="callable"):
        DeployMetric("x", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown deploy metric 'f1'"):
        resolve_metric("f1")


def _data(seed: int = 5) -> ArmsData:
    g = torch.Generator().manual_seed(seed)

    def split(n: int, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, D, generator=g)
        y = (x[:, 0] > 0).long()
        if shift:
            x[:, -1] += 3.0 * torch.randn(n, generator=g)
        return x, y

    pool = split(100, True)
    return ArmsData(
        split(300, False), split(100, False), pool[0], split(200, True), pool[1], target_val=split(80, True)
    )


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(D, 16), nn.ReLU(), nn.Linear(16, 2))


def test_lambda_is_chosen_by_the_metric_and_scores_are_recorded() -> None:
    worst_first = DeployMetric("error", lambda z, y: (z.argmax(1) != y).double())
    result = run_arms(
        _net,
        _data(),
        arms=("baseline", "matched"),
        references=(),
        seeds=(0,),
        strengths=(0.01, 1.0, 30.0),
        metric=worst_first,
        config=TrainConfig(epochs=3, batch_size=50, device="cpu"),
        quiet=True,
    )
    assert result.metric == "error"
    for run in result.runs_for("matched", "target_val") + result.runs_for("matched", "source_val"):
        key = f"{run.selection}_score"
        values = [getattr(c, key) for c in run.candidates]
        assert run.strength == run.candidates[int(np.argmax(values))].strength
        assert run.deploy_score == pytest.approx(1 - run.deploy_accuracy)
        assert torch.equal(run.scores, (~run.correct).double())
    assert result.scores("matched").shape == (1, 200)
    row = next(r for r in result.table() if r["arm"] == "matched")
    assert row["metric"] == "error" and row["metric_mean"] == pytest.approx(1 - row["deploy_mean"])


def test_verdict_reports_a_non_accuracy_metric_in_its_units() -> None:
    g = torch.Generator().manual_seed(0)
    base = -torch.rand(3, 200, generator=g)
    deploy = {"baseline": base, "matched": base + 0.2, "isotropic": base, "wrong": base}
    sv = {arm: torch.full((3,), 0.9) for arm in deploy}
    verdict = ship_verdict(deploy, sv, metric="neg_log_loss")
    assert verdict.verdict == "SHIP"
    assert "0.2000 (neg_log_loss)" in verdict.reasons[0] and "points" not in verdict.reasons[0]
    assert "20.00 points" in ship_verdict(deploy, sv).reasons[0]


def test_measuring_keeps_every_submodule_train_flag_of_the_users_model() -> None:
    from shiftlab.pmh._estimate import from_second_moment_samples
    from shiftlab.pmh._metrics import deploy_drift, sensitivity_ratio
    from shiftlab.pmh._train_data import predictions

    net = nn.Sequential(nn.Linear(D, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 2))
    net[1].eval()  # the user froze this one dropout
    before = [m.training for m in net.modules()]
    est = from_second_moment_samples(
        torch.randn(50, 2) @ torch.randn(2, D), site="input", shape=(D,), estimator="p", counts={}, rank=2
    )
    x = torch.randn(20, D)
    deploy_drift(net, est, x)
    sensitivity_ratio(net, est, x)
    METRICS["accuracy"].score(model_logits(net, x), torch.zeros(20, dtype=torch.long))
    predictions(net, x)
    assert [m.training for m in net.modules()] == before
