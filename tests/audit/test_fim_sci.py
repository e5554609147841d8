"""fim_norm against a per-sample loop; the Gram path against vmap; SCI against numpy's SVD."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from shiftlab.audit import fim_norm, network_sci, sci, sci_spectrum

CE = nn.functional.cross_entropy


def _loop_fim_norm(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> float:
    """Reference in the original's form: per-sample gradients in a loop, erank of G G^T / N, divided by N."""
    net = copy.deepcopy(model).eval()
    rows = []
    for i in range(x.shape[0]):
        net.zero_grad()
        CE(net(x[i : i + 1]), t[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.grad is not None]))
    g = torch.stack(rows).double().numpy()
    f_dual = g @ g.T / len(rows)
    s = np.linalg.svd(f_dual, compute_uv=False)
    p = s[s > 0] / s[s > 0].sum()
    return float(np.exp(-(p * np.log(p)).sum())) / len(rows)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))


@pytest.mark.parametrize("method", ["vmap", "linear"])
def test_fim_norm_equals_the_per_sample_loop(method: str) -> None:
    model = _mlp()
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(40, 20, generator=gen), torch.randint(0, 5, (40,), generator=gen)
    res = fim_norm(model, CE, x, t, n=40, method=method)  # type: ignore[arg-type]
    assert res.value == pytest.approx(_loop_fim_norm(model, x, t), abs=1e-5)
    assert res.method == method and res.n == 40
    assert res.n_parameters == sum(p.numel() for p in model.parameters())
    assert res.effective_rank == pytest.approx(res.value * 40)


def test_gram_path_equals_vmap_path_and_auto_picks_it() -> None:
    model = _mlp(2)
    x, t = torch.randn(64, 20), torch.randint(0, 5, (64,))
    a = fim_norm(model, CE, x, t, n=64, method="vmap")
    b = fim_norm(model, CE, x, t, n=64, method="linear")
    c = fim_norm(model, CE, x, t, n=64)
    assert b.value == pytest.approx(a.value, rel=1e-5)
    assert b.fisher_trace == pytest.approx(a.fisher_trace, rel=1e-5)
    assert c.method == "linear"


def test_conv_models_use_vmap_and_match_the_loop() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    x, t = torch.randn(24, 1, 8, 8), torch.randint(0, 4, (24,))
    res = fim_norm(model, CE, x, t, n=24)
    assert res.method == "vmap"
    assert res.value == pytest.approx(_loop_fim_norm(model, x, t), abs=1e-5)


def test_value_is_reported_at_a_fixed_n_and_depends_on_it() -> None:
    model = _mlp(4)
    x, t = torch.randn(200, 20), torch.randint(0, 5, (200,))
    small = fim_norm(model, CE, x, t, n=16, seed=0)
    large = fim_norm(model, CE, x, t, n=128, seed=0)
    assert small.n == 16 and large.n == 128
    assert small.value != pytest.approx(large.value, rel=0.05)  # not comparable across n
    assert fim_norm(model, CE, x, t, n=16, seed=0) == small  # seeded subset
    with pytest.raises(ValueError, match="needs at least 300 samples"):
        fim_norm(model, CE, x, t, n=300)
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        fim_norm(model, CE, x, t, n=1)


def test_model_is_untouched() -> None:
    model = _mlp(5).train()
    before = copy.deepcopy(model.state_dict())
    fim_norm(model, CE, torch.randn(32, 20), torch.randint(0, 5, (32,)), n=32)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_sci_spectrum_matches_numpy(rng: np.random.Generator) -> None:
    w = rng.normal(size=(12, 7)) @ np.diag([5, 3, 1, 1, 0.5, 0.1, 0.01])
    s = np.linalg.svd(w, compute_uv=False)
    p = s / s.sum()
    erank = np.exp(-(p * np.log(p)).sum())
    res = sci_spectrum(w)
    assert res.effective_rank == pytest.approx(erank, rel=1e-10)
    assert res.sci == pytest.approx(erank / 7, rel=1e-10) and res.max_rank == 7
    assert res.stable_rank == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-10)
    assert res.nuclear_norm == pytest.approx(s.sum(), rel=1e-10)
    assert res.spectral_norm == pytest.approx(s[0], rel=1e-10)
    assert res.spectral_entropy == pytest.approx(np.log(erank), rel=1e-10)
    assert sci(w) == res.sci
    assert sci(3.0 * w) == pytest.approx(res.sci, rel=1e-10)  # scale-free


def test_network_sci_reshapes_convolutions() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    res = network_sci(model)
    assert set(res.layers) == {"0", "3"}
    assert res.layers["0"].max_rank == 4  # (4, 2*3*3)
    assert res.layers["0"].sci == pytest.approx(sci(model[0].weight.detach().reshape(4, -1)))
    assert res.mean_sci == pytest.approx((res.layers["0"].sci + res.layers["3"].sci) / 2)
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        network_sci(nn.ReLU())
    with pytest.raises(ValueError, match="all zeros"):
        sci(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        sci(np.ones(3))


def test_rank_deficient_float32_gram_is_handled_at_round_off() -> None:
    # P = 8 parameters, N = 64 samples: 56 eigenvalues are zero up to float32 round-off
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 2))
    x, t = torch.randn(64, 3), torch.randint(0, 2, (64,))
    for method in ("vmap", "linear"):
        res = fim_norm(model, CE, x, t, n=64, method=method)  # type: ignore[arg-type]
        assert 1 <= res.effective_rank <= 8 + 1e-9
        assert res.value == pytest.approx(_loop_fim_norm(model, x, t), abs=1e-5)
