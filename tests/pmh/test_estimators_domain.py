"""D1 ``subspace`` and D4 ``domain``: oracles, planted recovery, no index pairing, model safety."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from shiftlab.functional.subspaces import principal_angles
from shiftlab.pmh import domain, subspace

D, R, K = 12, 2, 3


def _basis() -> tuple[torch.Tensor, torch.Tensor]:
    """Planted nuisance basis B (d, r) and signal basis M (d, K-1): orthonormal, mutually orthogonal."""
    q, _ = torch.linalg.qr(
        torch.randn(D, D, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    )
    return q[:, :R], q[:, R : R + K - 1]


def _planted(
    n: int, seed: int, *, class_shift: bool = True, noise: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source and target with the same classes; the target moves along B only (per-class mean + noise)."""
    b, m = _basis()
    g = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.cat([torch.zeros(1, K - 1), torch.eye(K - 1)]).double() @ m.T  # (K, d)
    shifts = torch.tensor([[2.0, 0.0], [0.0, -2.0], [1.5, 1.5]], dtype=torch.float64)
    if not class_shift:
        shifts = torch.tensor([[1.5, -1.0]], dtype=torch.float64).expand(K, R)
    ys = torch.randint(K, (n,), generator=g)
    yt = torch.randint(K, (n,), generator=g)
    xs = centres[ys] + noise * torch.randn(n, D, generator=g, dtype=torch.float64)
    z = torch.randn(n, R, generator=g, dtype=torch.float64)
    xt = centres[yt] + noise * torch.randn(n, D, generator=g, dtype=torch.float64) + (shifts[yt] + z) @ b.T
    return xs, ys, xt, yt


def _angle(estimate_basis: torch.Tensor, truth: torch.Tensor) -> float:
    return float(principal_angles(estimate_basis, truth).max())


def _mean_angle(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    b, _ = _basis()
    return sum(_angle(fn(*_planted(n, seed)).basis(), b) for seed in range(3)) / 3


def _projector(estimate) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return estimate.factor @ estimate.factor.T


# ------------------------------------------------------------------------------------------------------ D1


def test_subspace_equals_brute_force_all_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(30, 5, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 3, (30,), generator=g)
    xt = torch.randn(20, 5, generator=g, dtype=torch.float64) + 1.0
    yt = torch.randint(0, 4, (20,), generator=g)  # class 3 has no source rows
    shared = sorted(set(ys.tolist()) & set(yt.tolist()))
    n_shared = sum(int((yt == c).sum()) for c in shared)
    oracle = torch.zeros(5, 5, dtype=torch.float64)
    for c in shared:
        diffs = (xt[yt == c][:, None, :] - xs[ys == c][None, :, :]).reshape(-1, 5)
        oracle += int((yt == c).sum()) / n_shared * diffs.T @ diffs / diffs.shape[0]
    values, vectors = torch.linalg.eigh(oracle)
    values, vectors = values.flip(0), vectors.flip(1)
    est = subspace(xs, ys, xt, yt, rank=3)
    torch.testing.assert_close(est.spectrum, values)
    top = vectors[:, :3] @ torch.diag(values[:3]) @ vectors[:, :3].T
    torch.testing.assert_close(_projector(est), top)
    residual = subspace(xs, ys, xt, yt, rank=4, floor="residual")
    assert residual.trace == pytest.approx(float(oracle.trace()))
    assert est.counts["n_pairs"] == sum(int((ys == c).sum()) * int((yt == c).sum()) for c in shared)
    assert est.counts["n_target"] == n_shared


def test_subspace_recovers_planted_subspace_better_with_more_data() -> None:
    def fit(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor):  # type: ignore[no-untyped-def]
        return subspace(xs, ys, xt, yt, rank=R)

    small, large = _mean_angle(fit, 40), _mean_angle(fit, 4000)
    assert large < small
    assert large < 0.1


def test_subspace_does_not_pair_rows_by_index() -> None:
    xs, ys, xt, yt = _planted(200, 0)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(1))
    a = subspace(xs, ys, xt, yt, rank=R)
    b = subspace(xs, ys, xt[perm], yt[perm], rank=R)
    torch.testing.assert_close(_projector(a), _projector(b))


def test_signal_basis_spans_the_source_class_mean_differences() -> None:
    xs, ys, xt, yt = _planted(500, 0)
    est = subspace(xs, ys, xt, yt, rank=R)
    assert est.signal is not None and est.signal.shape == (D, K - 1)
    torch.testing.assert_close(est.signal.T @ est.signal, torch.eye(K - 1, dtype=torch.float64))
    means = torch.stack([xs[ys == c].mean(0) for c in range(K)])
    diffs = (means[1:] - means[0]).T
    assert _angle(est.signal, diffs) < 1e-8


def test_subspace_at_a_layer_equals_subspace_on_the_layer_features() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 6), nn.ReLU(), nn.Linear(6, K)).double()
    xs, ys, xt, yt = _planted(300, 0)
    at_layer = subspace(xs, ys, xt, yt, model=net, site="1", rank=2)
    with torch.no_grad():
        fs, ft = net[1](net[0](xs)), net[1](net[0](xt))
    direct = subspace(fs, ys, ft, yt, rank=2)
    assert at_layer.site == "1" and at_layer.shape == (6,)
    torch.testing.assert_close(_projector(at_layer), _projector(direct))


# ------------------------------------------------------------------------------------------------------ D4


def _positive_part(a: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(a)
    return vectors @ torch.diag(values.clamp(min=0)) @ vectors.T


def test_domain_labelled_matches_its_formula() -> None:
    xs, ys, xt, yt = _planted(150, 3)
    oracle = torch.zeros(D, D, dtype=torch.float64)
    for c in range(K):
        s, t = xs[ys == c], xt[yt == c]
        shift = t.mean(0) - s.mean(0)
        pi = t.shape[0] / xt.shape[0]
        oracle += pi * (torch.outer(shift, shift) + _positive_part(torch.cov(t.T) - torch.cov(s.T)))
    est = domain(xs, xt, ys, yt, rank=4)
    values, vectors = torch.linalg.eigh(oracle)
    values, vectors = values.flip(0), vectors.flip(1)
    torch.testing.assert_close(est.spectrum, values, atol=1e-12, rtol=1e-9)
    top = vectors[:, :4] @ torch.diag(values[:4]) @ vectors[:, :4].T
    torch.testing.assert_close(_projector(est), top)
    assert est.counts == {"n_source": 150, "n_target": 150, "n_classes": K, "n_target_labelled": 150}


def test_domain_moments_matches_its_formula_in_high_dimension() -> None:
    # d > rows: the positive part is computed in the row span; it must equal the dense formula
    g = torch.Generator().manual_seed(4)
    xs = torch.randn(8, 20, generator=g, dtype=torch.float64)
    xt = 2 * torch.randn(9, 20, generator=g, dtype=torch.float64) + 0.3
    shift = xt.mean(0) - xs.mean(0)
    oracle = torch.outer(shift, shift) + _positive_part(torch.cov(xt.T) - torch.cov(xs.T))
    est = domain(xs, xt, rank=5)
    values = torch.linalg.eigvalsh(oracle).flip(0)
    torch.testing.assert_close(est.spectrum, values[: est.spectrum.numel()], atol=1e-10, rtol=1e-9)
    assert float(values[est.spectrum.numel() :].abs().max()) < 1e-10


@pytest.mark.parametrize("mode", ["labelled", "pseudo-labelled"])
def test_domain_class_aligned_recovers_planted_subspace(mode: str) -> None:
    def fit(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor):  # type: ignore[no-untyped-def]
        if mode == "labelled":
            return domain(xs, xt, ys, yt, rank=R)
        return domain(xs, xt, ys, model=_nearest_mean_model(xs, ys), rank=R)

    small, large = _mean_angle(fit, 40), _mean_angle(fit, 4000)
    assert large < small
    assert large < 0.1


def _nearest_mean_model(xs: torch.Tensor, ys: torch.Tensor, sharpness: float = 1.0) -> nn.Module:
    """Linear classifier with logits 2 μ_c·x − ‖μ_c‖² (softmax of −‖x − μ_c‖²) from source class means."""
    means = torch.stack([xs[ys == c].mean(0) for c in range(K)])
    net = nn.Linear(D, K).double()
    with torch.no_grad():
        net.weight.copy_(2 * sharpness * means)
        net.bias.copy_(-sharpness * means.pow(2).sum(1))
    return net


def test_domain_moments_recovers_class_independent_shift() -> None:
    b, _ = _basis()

    def angle(n: int) -> float:
        return (
            sum(_angle(domain(*_planted(n, s, class_shift=False)[::2], rank=R).basis(), b) for s in range(3))
            / 3
        )

    small, large = angle(40), angle(4000)
    assert large < small
    assert large < 0.15


def test_domain_recovers_a_pure_mean_shift_without_labels() -> None:
    g = torch.Generator().manual_seed(5)
    v = torch.tensor([0.0, 3.0, -1.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    xs = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    xt = torch.randn(2000, 6, generator=g, dtype=torch.float64) + v
    est = domain(xs, xt, rank=1)
    assert _angle(est.basis(), v[:, None]) < 0.05
    assert float(est.factor.pow(2).sum()) == pytest.approx(float(v @ v), rel=0.05)


def test_domain_pseudo_labels_report_how_many_rows_were_kept_and_refuse_too_few() -> None:
    xs, ys, xt, _ = _planted(600, 0)
    est = domain(xs, xt, ys, model=_nearest_mean_model(xs, ys), rank=R)
    assert 0 < est.counts["n_target_confident"] <= 600
    timid = _nearest_mean_model(xs, ys, sharpness=1e-3)  # softmax near uniform: nothing is confident
    with pytest.raises(ValueError, match=r"0 of 600 target rows have max softmax >= 0.9"):
        domain(xs, xt, ys, model=timid)


def test_domain_does_not_pair_rows_by_index() -> None:
    xs, ys, xt, yt = _planted(300, 1)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    for kwargs in ({"source_labels": ys, "target_labels": yt}, {}):
        shuffled = {k: (v[perm] if k == "target_labels" else v) for k, v in kwargs.items()}
        a = domain(xs, xt, rank=R, **kwargs)
        b = domain(xs, xt[perm], rank=R, **shuffled)
        torch.testing.assert_close(_projector(a), _projector(b))


def test_estimators_never_touch_the_users_model() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, K)).double().train()
    before = copy.deepcopy(net.state_dict())
    xs, ys, xt, yt = _planted(200, 0)
    domain(xs, xt, ys, model=net, site="1", confidence=0.34, rank=2)
    subspace(xs, ys, xt, yt, model=net, site="2", rank=2)
    assert net.training and all(m.training for m in net.modules())
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    assert all(p.grad is None for p in net.parameters())
