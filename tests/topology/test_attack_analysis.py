"""FGSM runs a real attack; confusion pairs are scored against sklearn's confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torch import nn
from torch.nn import functional

from shiftlab.data import load
from shiftlab.topology import (
    build_model,
    confusion_matrix,
    fgsm,
    fgsm_pair_vulnerability,
    pair_confusion_rates,
    score_pairs,
)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    data = load("digits", "train")
    net = build_model("mlp", (1, 8, 8), 10, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in torch.randperm(len(data), generator=gen).split(64):
            opt.zero_grad()
            functional.cross_entropy(net(data.images[idx]), data.labels[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    test = load("digits", "test")
    return net.eval(), test.images, test.labels


def test_fgsm_perturbs_within_epsilon_and_accuracy_drops(
    trained: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    net, x, y = trained
    x_adv = fgsm(net, x, y, 0.1)
    delta = (x_adv - x).abs()
    assert bool((delta <= 0.1 + 1e-6).all()) and float(delta.amax()) == pytest.approx(0.1, abs=1e-6)
    assert float((x_adv != x).float().mean()) > 0.5 and bool(((x_adv >= 0) & (x_adv <= 1)).all())
    with torch.no_grad():
        clean = float((net(x).argmax(1) == y).float().mean())
        attacked = float((net(x_adv).argmax(1) == y).float().mean())
        noise = (
            x + 0.1 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
        ).clamp(0, 1)
        random_sign = float((net(noise).argmax(1) == y).float().mean())
    assert clean > 0.9
    assert attacked < clean - 0.2  # the gradient step hurts far more than random signs of the same size
    assert attacked < random_sign - 0.1
    assert all(p.grad is None for p in net.parameters())


def test_pair_vulnerability_counts_the_attack(trained: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    net, x, y = trained
    state = {k: v.clone() for k, v in net.state_dict().items()}
    res = fgsm_pair_vulnerability(net, x, y, 10, epsilon=0.1, batch_size=100)
    assert res.mean_perturbation == pytest.approx(0.1, abs=1e-3)
    assert res.adversarial_accuracy < res.clean_accuracy - 0.2
    with torch.no_grad():
        clean_pred = net(x).argmax(1)
        adv_pred = net(fgsm(net, x, y, 0.1)).argmax(1)
    ok = clean_pred == y
    brute = sk_confusion_matrix(y[ok].numpy(), adv_pred[ok].numpy(), labels=list(range(10)))
    np.fill_diagonal(brute, 0)
    np.testing.assert_array_equal(res.flips.numpy(), brute)
    assert res.correct.tolist() == np.bincount(y[ok].numpy(), minlength=10).tolist()
    v = res.pair_vulnerability
    assert torch.allclose(v, v.T) and float(v.sum()) > 0
    a, b = 3, 5
    expected = (brute[a, b] + brute[b, a]) / (res.correct[a] + res.correct[b])
    assert float(v[a, b]) == pytest.approx(float(expected))
    assert all(torch.equal(state[k], t) for k, t in net.state_dict().items())


def test_fgsm_validation() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="epsilon"):
        fgsm(net, x, y, 0.0)
    with pytest.raises(ValueError, match="bounds"):
        fgsm(net, x + 2, y, 0.1)
    with pytest.raises(ValueError, match="labels"):
        fgsm_pair_vulnerability(net, x, torch.tensor([0, 1, 5]), 2)


def test_confusion_matrix_matches_sklearn(rng: np.random.Generator) -> None:
    y = rng.integers(0, 4, size=200)
    p = np.where(rng.random(200) < 0.7, y, rng.integers(0, 4, size=200))
    cm = confusion_matrix(torch.from_numpy(p), torch.from_numpy(y), 4)
    np.testing.assert_array_equal(cm.numpy(), sk_confusion_matrix(y, p, labels=[0, 1, 2, 3]))
    rates = pair_confusion_rates(cm)
    n = cm.sum(1).double()
    assert float(rates[1, 2]) == pytest.approx(float((cm[1, 2] + cm[2, 1]) / (n[1] + n[2])))
    assert torch.equal(rates, rates.T) and bool((torch.diagonal(rates) == 0).all())


def test_score_pairs_on_planted_truth(rng: np.random.Generator) -> None:
    c = 7
    pts = rng.normal(size=(c, 3))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    rates = np.exp(-d)
    np.fill_diagonal(rates, 0.0)
    s = score_pairs(d, rates, k=4, n_permutations=499)
    assert s.spearman == pytest.approx(-1.0) and s.precision_at_k == 1.0
    assert s.mantel_p is not None and s.mantel_p < 0.01
    assert len(s.pairs) == c * (c - 1) // 2 and list(s.distance) == sorted(s.distance)
    noise = rng.random((c, c))
    noise = noise + noise.T
    np.fill_diagonal(noise, 0.0)
    unrelated = score_pairs(d, noise, k=4, n_permutations=499)
    assert unrelated.mantel_p is not None and unrelated.mantel_p > 0.01


def test_score_pairs_says_why_a_score_is_undefined() -> None:
    d = np.array([[0.0, 1, 2], [1, 0, 3], [2, 3, 0]])
    flat = score_pairs(d, np.zeros((3, 3)), k=1)
    assert flat.spearman is None and "same rate" in flat.note and flat.precision_at_k == 0.0
    partial = np.array([[0.0, 0.1, np.nan], [0.1, 0, 0.3], [np.nan, 0.3, 0]])
    s = score_pairs(d, partial, k=1)
    assert s.spearman is None and "fewer than 3" in s.note and s.precision_at_k is None
    with pytest.raises(ValueError, match="k must be <= 3"):
        score_pairs(d, np.zeros((3, 3)), k=4)
