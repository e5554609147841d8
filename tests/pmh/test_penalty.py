import itertools
from collections.abc import Callable

import pytest
import torch
from torch import nn

from shiftlab.pmh._controls import MODES, control_estimate
from shiftlab.pmh._estimate import NuisanceEstimate, from_second_moment_samples
from shiftlab.pmh._penalty import ESTIMATORS, PMHPenalty

D = 16


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(D, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 4)
    ).double()


def _estimate(rank: int = 3, floor: float = 0.0) -> NuisanceEstimate:
    g = torch.Generator().manual_seed(1)
    deltas = torch.randn(300, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, D, generator=g, dtype=torch.float64
    )
    labels_means = torch.randn(D, 2, generator=g, dtype=torch.float64)
    signal, _ = torch.linalg.qr(labels_means)
    return from_second_moment_samples(
        deltas,
        site="input",
        shape=(1, 4, 4),
        estimator="planted",
        counts={"n": 300},
        rank=rank,
        floor=floor,
        signal=signal,
    )


def _x(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.mark.parametrize(("mode", "estimator"), list(itertools.product(MODES, ESTIMATORS)))
def test_every_mode_and_estimator_has_a_gradient_on_the_parameters(mode: str, estimator: str) -> None:
    net = _net()
    penalty = PMHPenalty(_estimate(floor=0.01), mode=mode, estimator=estimator)
    result = penalty(net, _x())
    assert result.value.item() > 0
    result.value.backward()
    for name, param in net.named_parameters():
        if name != "5.bias":  # the output bias does not change the Jacobian
            assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("site", ["input", "2"])
def test_jvp_hutchinson_and_fd_agree(mode: str, site: str) -> None:
    net = _net()
    if site == "input":
        est = _estimate(floor=0.01)
    else:
        hidden = torch.randn(400, 2, dtype=torch.float64) @ torch.randn(2, 24, dtype=torch.float64)
        signal, _ = torch.linalg.qr(torch.randn(24, 2, dtype=torch.float64))
        est = from_second_moment_samples(
            hidden, site="2", shape=(24,), estimator="planted", counts={}, rank=2, floor=0.01, signal=signal
        )
    x = _x(16)
    exact = PMHPenalty(est, mode=mode, estimator="jvp", n_probes=4000)(net, x).value.item()
    hutch = PMHPenalty(est, mode=mode, estimator="hutchinson", n_probes=4000)(net, x).value.item()
    fd = PMHPenalty(est, mode=mode, estimator="fd", n_probes=4000, fd_step=1e-6)(net, x).value.item()
    assert hutch == pytest.approx(exact, rel=0.06)
    assert fd == pytest.approx(hutch, rel=1e-4)


def test_exact_jvp_equals_the_trace_formula_with_the_explicit_jacobian() -> None:
    net = _net()
    est = _estimate()
    x = _x(5)
    sigma = est.covariance()
    expected = torch.stack(
        [
            torch.trace(j @ sigma @ j.T)
            for j in (
                torch.autograd.functional.jacobian(lambda v: net(v.reshape(1, 1, 4, 4))[0], x[b].flatten())
                for b in range(5)
            )
        ]
    ).mean()
    got = PMHPenalty(est, estimator="jvp")(net, x).value
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_penalty_is_zero_for_a_model_constant_along_sigma(estimator: str) -> None:
    est = _estimate()
    basis = est.basis()
    projector = torch.eye(D, dtype=torch.float64) - basis @ basis.T
    net = nn.Sequential(nn.Flatten(), nn.Linear(D, 3, bias=False)).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(3, D, dtype=torch.float64) @ projector)
    value = PMHPenalty(est, estimator=estimator, n_probes=8)(net, _x()).value.item()
    assert abs(value) < 1e-10
    # the same model is not constant along the isotropic control
    assert PMHPenalty(est, mode="isotropic", estimator=estimator, n_probes=8)(net, _x()).value.item() > 1e-3


def test_controls_keep_the_trace_and_move_the_direction() -> None:
    est = _estimate(floor=0.02)
    iso = control_estimate(est, "isotropic")
    wrong = control_estimate(est, "wrong", seed=3)
    signal = control_estimate(est, "signal")
    for ctrl in (iso, wrong, signal):
        assert ctrl.trace == pytest.approx(est.trace, rel=1e-12)
    assert iso.rank == 0
    assert (est.basis().T @ wrong.basis()).abs().max() < 1e-10
    torch.testing.assert_close(wrong.factor.norm(dim=0), est.factor.norm(dim=0))
    torch.testing.assert_close(signal.basis().abs(), est.signal.abs())
    assert not torch.allclose(control_estimate(est, "wrong", seed=4).factor, wrong.factor)


def test_layer_site_and_layer_measure() -> None:
    net = _net()
    hidden = torch.randn(100, 24, dtype=torch.float64)
    est = from_second_moment_samples(hidden, site="2", shape=(24,), estimator="planted", counts={}, rank=3)
    penalty = PMHPenalty(est, measure="4")
    result = penalty(net, _x())
    torch.testing.assert_close(result.output, net(_x()))
    result.value.backward()
    assert net[1].weight.grad.abs().sum() > 0  # below the site: the Jacobian depends on its activations
    assert net[5].weight.grad is None  # above the measured layer: not part of the penalty
    assert not any(m._forward_hooks for m in net.modules())


def test_batchnorm_in_training_mode_trains_with_fd_and_matches_vmap_in_eval() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(16, 3)
    ).double()
    est = _estimate(rank=3)
    train_value = PMHPenalty(est, estimator="fd")(net, _x()).value
    train_value.backward()
    assert net[0].weight.grad.abs().sum() > 0
    net.eval()
    looped = PMHPenalty(est, vectorize=False)(net, _x()).value
    vmapped = PMHPenalty(est, vectorize=True)(net, _x()).value
    torch.testing.assert_close(looped, vmapped)


def _jvp_weight_gradient_is_right(op: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    torch.manual_seed(0)
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def tangent_out(weight: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(lambda d: op((x + d) @ weight.T), (torch.zeros_like(x),), (t,))[1]

    return bool(torch.autograd.gradcheck(tangent_out, (w,), raise_exception=False))


def test_the_forward_ad_guard_matches_what_torch_gets_wrong() -> None:
    """If torch fixes layer_norm's JVP derivative this test fails, and the guard can be narrowed."""
    layer_norm = nn.LayerNorm(5).double()
    assert not _jvp_weight_gradient_is_right(layer_norm)
    assert _jvp_weight_gradient_is_right(lambda z: nn.functional.group_norm(z.unsqueeze(-1), 1))
    assert _jvp_weight_gradient_is_right(lambda z: nn.functional.rms_norm(z, (5,)))


@pytest.mark.parametrize("estimator", ["jvp", "hutchinson"])
@pytest.mark.parametrize("norm", [nn.LayerNorm(8), nn.BatchNorm1d(8)])
def test_forward_ad_estimators_refuse_norms_whose_jvp_gradient_is_wrong(
    estimator: str, norm: nn.Module
) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), norm, nn.Tanh(), nn.Linear(8, 3)).double()
    est = _estimate(rank=2)
    with pytest.raises(ValueError, match=r"wrong gradients.*estimator='fd'"):
        PMHPenalty(est, estimator=estimator)(net, _x())
    with torch.no_grad():  # the value alone is right, so measuring is allowed
        assert PMHPenalty(est, estimator=estimator)(net, _x()).value > 0
    PMHPenalty(est, estimator="fd")(net, _x()).value.backward()
    assert net[1].weight.grad.abs().sum() > 0


def test_penalty_is_seeded() -> None:
    est = _estimate(floor=0.01)
    a = PMHPenalty(est, estimator="hutchinson", seed=5)(_net(), _x()).value.item()
    b = PMHPenalty(est, estimator="hutchinson", seed=5)(_net(), _x()).value.item()
    c = PMHPenalty(est, estimator="hutchinson", seed=6)(_net(), _x()).value.item()
    assert a == b and a != c


def test_bad_input_is_rejected_before_work() -> None:
    est = _estimate()
    net = _net()
    with pytest.raises(ValueError, match="unknown layer 'nope'; valid names: '0', '1'"):
        PMHPenalty(est, measure="nope")(net, _x())
    with pytest.raises(ValueError, match="measure a layer above"):
        hidden = from_second_moment_samples(
            torch.randn(50, 24, dtype=torch.float64), site="4", shape=(24,), estimator="p", counts={}, rank=2
        )
        PMHPenalty(hidden, measure="2")(net, _x())
    with pytest.raises(ValueError, match="inputs of shape"):
        PMHPenalty(est)(net, torch.randn(4, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown mode"):
        PMHPenalty(est, mode="matchd")
    with pytest.raises(ValueError, match="unknown estimator"):
        PMHPenalty(est, estimator="exact")
    with pytest.raises(ValueError, match="n_probes"):
        PMHPenalty(est, n_probes=0)
    with pytest.raises(ValueError, match="fd_step"):
        PMHPenalty(est, fd_step=-1.0)
    with pytest.raises(TypeError, match="NuisanceEstimate"):
        PMHPenalty(torch.eye(16))  # type: ignore[arg-type]
    no_signal = NuisanceEstimate(est.factor, 0.0, est.spectrum, "input", (1, 4, 4), "p", {})
    with pytest.raises(ValueError, match="source labels"):
        PMHPenalty(no_signal, mode="signal")


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("site", ["input", "2"])
def test_fraction_uses_a_sub_batch_and_returns_the_full_output(estimator: str, site: str) -> None:
    net = _net()
    if site == "input":
        est = _estimate(floor=0.01)
    else:
        hidden = torch.randn(100, 24, dtype=torch.float64)
        est = from_second_moment_samples(hidden, site="2", shape=(24,), estimator="p", counts={}, rank=3)
    x = _x(32)
    partial = PMHPenalty(est, estimator=estimator, seed=3)(net, x, fraction=0.25)
    direct = PMHPenalty(est, estimator=estimator, seed=3)(net, x[:8])
    torch.testing.assert_close(partial.value, direct.value)
    torch.testing.assert_close(partial.output, net(x))
    partial.value.backward()
    assert net[1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="fraction"):
        PMHPenalty(est)(net, x, fraction=0.0)


class _Packed(nn.Module):
    """A block returning its hidden state first, with extras (an LSTM, an attention block, a ModelOutput)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.linear = nn.Linear(24, 24)

    def forward(self, h: torch.Tensor) -> object:
        out = torch.tanh(self.linear(h))
        if self.kind == "tuple":
            return out, out.detach() * 0
        return {"last_hidden_state": out, "aux": out.detach()}


class _Unpack(nn.Module):
    def forward(self, packed: object) -> torch.Tensor:
        return packed[0] if isinstance(packed, tuple) else packed["last_hidden_state"]  # type: ignore[index]


@pytest.mark.parametrize("kind", ["tuple", "mapping"])
def test_a_site_returning_a_tuple_or_mapping_is_perturbed_in_its_first_tensor(kind: str) -> None:
    torch.manual_seed(0)
    packed = nn.Sequential(
        nn.Flatten(), nn.Linear(D, 24), _Packed(kind), _Unpack(), nn.Linear(24, 4)
    ).double()
    plain = nn.Sequential(
        nn.Flatten(), nn.Linear(D, 24), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 4)
    ).double()
    plain[1].load_state_dict(packed[1].state_dict())
    plain[2].load_state_dict(packed[2].linear.state_dict())
    plain[4].load_state_dict(packed[4].state_dict())
    hidden = torch.randn(200, 3, dtype=torch.float64) @ torch.randn(3, 24, dtype=torch.float64)
    est_packed = from_second_moment_samples(hidden, site="2", shape=(24,), estimator="p", counts={}, rank=3)
    est_plain = from_second_moment_samples(hidden, site="3", shape=(24,), estimator="p", counts={}, rank=3)
    got = PMHPenalty(est_packed, estimator="fd")(packed, _x()).value
    want = PMHPenalty(est_plain, estimator="fd")(plain, _x()).value
    torch.testing.assert_close(got, want)
    got.backward()
    assert packed[4].weight.grad.abs().sum() > 0  # the Jacobian above the site is the head's weight
