"""D3 ``augmentation``, D7 ``style`` and ``adversarial``: planted recovery, layer oracles, PGD limits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.functional import cross_entropy

from shiftlab.functional.subspaces import principal_angles
from shiftlab.pmh import adversarial, augmentation, random_shift, style

D, R = 10, 2


def _basis(d: int = D, r: int = R, seed: int = 7) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(d, r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(principal_angles(a, b).max())


def _planted_augmentation(basis: torch.Tensor, noise: float = 0.4):  # type: ignore[no-untyped-def]
    """x -> x + B z + noise·ε, randomness from the generator."""

    def aug(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        z = torch.randn(flat.shape[0], basis.shape[1], generator=generator, dtype=x.dtype)
        eps = torch.randn(flat.shape, generator=generator, dtype=x.dtype)
        return (flat + z @ basis.T + noise * eps).reshape(x.shape)

    return aug


def test_augmentation_recovers_planted_subspace_better_with_more_data() -> None:
    b = _basis()
    aug = _planted_augmentation(b)

    def angle(n: int) -> float:
        return (
            sum(
                _angle(augmentation(torch.randn(n, D, dtype=torch.float64), aug, seed=s, rank=R).basis(), b)
                for s in range(3)
            )
            / 3
        )

    small, large = angle(20), angle(3000)
    assert large < small
    assert large < 0.1


def test_augmentation_deltas_are_exact_and_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 6, 6, generator=g, dtype=torch.float64)
    est = augmentation(x, random_shift, n_draws=3, seed=11, rank=5)
    again = augmentation(x, random_shift, n_draws=3, seed=11, rank=5)
    torch.testing.assert_close(est.factor, again.factor)
    gen = torch.Generator().manual_seed(11)
    deltas = torch.cat([(random_shift(x, gen) - x).reshape(16, -1) for _ in range(3)])
    oracle = torch.linalg.svdvals(deltas).pow(2) / deltas.shape[0]
    torch.testing.assert_close(est.spectrum, oracle)
    assert est.counts == {"n_samples": 16, "n_augmentations": 1, "n_draws": 3, "n_deltas": 48}
    other = augmentation(x, random_shift, n_draws=3, seed=12, rank=5)
    assert not torch.allclose(est.spectrum, other.spectrum)


def test_augmentation_at_a_layer_maps_deltas_through_the_layer() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    b = _basis()
    x = torch.randn(200, D, dtype=torch.float64)
    est = augmentation(x, _planted_augmentation(b, noise=0.0), model=net, site="0", seed=3, rank=2)
    # a linear layer maps δ to W δ: the estimate must live in span(W B)
    assert est.shape == (6,)
    assert _angle(est.basis(), net[0].weight.detach() @ b) < 1e-6


def test_augmentation_checks_what_the_callable_returns() -> None:
    x = torch.rand(4, 1, 5, 5)
    with pytest.raises(ValueError, match="must keep x's shape"):
        augmentation(x, lambda x, g: x[:, :, :4], rank=1)
    with pytest.raises(ValueError, match="non-finite"):
        augmentation(x, lambda x, g: x * float("nan"), rank=1)
    with pytest.raises(TypeError, match="callable"):
        augmentation(x, [random_shift, 3], rank=1)


def test_style_recovers_planted_subspace_better_with_more_data() -> None:
    b = _basis()

    def angle(n: int) -> float:
        total = 0.0
        for s in range(3):
            g = torch.Generator().manual_seed(s)
            content = 3 * torch.randn(n, D, generator=g, dtype=torch.float64)
            moved = (
                torch.randn(n, R, generator=g, dtype=torch.float64) @ b.T
                + torch.tensor([1.0, -1.0], dtype=torch.float64) @ b.T
            )
            styled = content + moved + 0.4 * torch.randn(n, D, generator=g, dtype=torch.float64)
            total += _angle(style(content, styled, rank=R).basis(), b)
        return total / 3

    small, large = angle(20), angle(3000)
    assert large < small
    assert large < 0.1


def test_style_is_the_uncentred_second_moment_of_paired_deltas() -> None:
    g = torch.Generator().manual_seed(1)
    content = torch.randn(50, 4, generator=g, dtype=torch.float64)
    styled = content + 1.0 + 0.1 * torch.randn(50, 4, generator=g, dtype=torch.float64)
    delta = styled - content
    oracle = delta.T @ delta / 50  # uncentred: the common offset of +1 is kept
    est = style(content, styled, rank=3, floor="residual")
    assert est.trace == pytest.approx(float(oracle.trace()))
    torch.testing.assert_close(est.spectrum, torch.linalg.eigvalsh(oracle).flip(0))
    with pytest.raises(ValueError, match="paired row by row"):
        style(content, styled[:-1])


def _linear_head(basis: torch.Tensor, classes: int = 3) -> nn.Module:
    """Logits W x with the rows of W inside span(basis): the CE gradient wrt x lies in span(basis)."""
    net = nn.Linear(basis.shape[0], classes, bias=False).double()
    coef = torch.randn(
        classes, basis.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    with torch.no_grad():
        net.weight.copy_(3 * coef @ basis.T)
    return net


def test_adversarial_l2_recovers_the_heads_subspace_better_with_more_data() -> None:
    b = _basis()
    net = _linear_head(b)

    def angle(n: int) -> float:
        total = 0.0
        for s in range(3):
            g = torch.Generator().manual_seed(s)
            x = torch.randn(n, D, generator=g, dtype=torch.float64)
            y = torch.randint(3, (n,), generator=g)
            est = adversarial(net, x, y, norm="l2", epsilon=0.5, steps=5, seed=s, batch_size=1024, rank=R)
            total += _angle(est.basis(), b)
        return total / 3

    small, large = angle(15), angle(1000)
    assert large < small
    assert large < 0.15


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_adversarial_stays_in_the_ball_and_the_valid_range_and_raises_the_loss(norm: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(64, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(3, (64,), generator=g)
    eps = 0.1 if norm == "linf" else 0.5
    est = adversarial(net, x, y, norm=norm, epsilon=eps, steps=8, valid_range=(0.0, 1.0), rank=3)  # type: ignore[arg-type]
    # rebuild δ with the same private routine and check its constraints
    from shiftlab.pmh._pgd import pgd

    delta = pgd(
        net,
        x,
        y,
        norm=norm,
        epsilon=eps,
        steps=8,
        step_size=2.5 * eps / 8,
        random_start=True,
        valid_range=(0.0, 1.0),
        generator=torch.Generator().manual_seed(0),
    )
    size = delta.flatten(1).abs().amax(1) if norm == "linf" else delta.flatten(1).norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-9)
    assert float((x + delta).min()) >= 0.0 and float((x + delta).max()) <= 1.0
    with torch.no_grad():
        assert float(cross_entropy(net(x + delta), y)) > float(cross_entropy(net(x), y)) + 1e-3
    flat = delta.reshape(64, -1)
    torch.testing.assert_close(est.spectrum, torch.linalg.svdvals(flat).pow(2) / 64)
    assert est.signal is not None


def test_adversarial_leaves_the_model_alone_and_checks_its_input() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).double().train()
    before = copy.deepcopy(net.state_dict())
    x = torch.rand(32, 4, dtype=torch.float64)
    y = torch.arange(32) % 2
    adversarial(net, x, y, epsilon=0.1, steps=3, rank=2)
    assert net.training
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="outside valid_range"):
        adversarial(net, x + 2, y, epsilon=0.1, valid_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="norm must be"):
        adversarial(net, x, y, epsilon=0.1, norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        adversarial(net, x, y, epsilon=0.0)
    with pytest.raises(ValueError, match="logits"):
        adversarial(nn.Linear(4, 1).double(), x, y, epsilon=0.1)
