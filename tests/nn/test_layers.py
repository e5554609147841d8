"""shiftlab.nn: GroupMap, InstanceMap, LayerMap, MonotoneTarget."""

from __future__ import annotations

import copy
import doctest

import pytest
import torch
from torch import nn

import shiftlab.nn
from shiftlab.data import load
from shiftlab.functional.quantile import GRAD_NAMES, empirical_quantiles, knot_levels
from shiftlab.nn import GroupMap, InstanceMap, LayerMap, MonotoneTarget, _layers, _target


@pytest.mark.parametrize("module", [shiftlab.nn, _layers, _target], ids=lambda m: m.__name__)
def test_docstring_examples(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def test_public_api() -> None:
    assert set(shiftlab.nn.__all__) == {
        "DEFAULT_GRAD",
        "GroupMap",
        "InstanceMap",
        "LayerMap",
        "MonotoneTarget",
    }


@pytest.mark.parametrize(
    ("ours", "torch_norm"),
    [
        (GroupMap(4, 12), nn.GroupNorm(4, 12)),
        (GroupMap(4, 12, affine=False), nn.GroupNorm(4, 12, affine=False)),
        (InstanceMap(6), nn.InstanceNorm2d(6)),
        (InstanceMap(6, affine=True), nn.InstanceNorm2d(6, affine=True)),
        (LayerMap([3, 5]), nn.LayerNorm([3, 5])),
        (LayerMap(7, bias=False), nn.LayerNorm(7, bias=False)),
        (LayerMap(7, elementwise_affine=False), nn.LayerNorm(7, elementwise_affine=False)),
    ],
)
def test_parameter_shapes_match_the_torch_norms(ours: nn.Module, torch_norm: nn.Module) -> None:
    def shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in m.named_parameters()}

    assert shapes(ours) == shapes(torch_norm)


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (GroupMap(2, 4), (5, 4)),
        (GroupMap(2, 4), (5, 4, 7)),
        (GroupMap(2, 4), (5, 4, 3, 3)),
        (GroupMap(2, 4), (5, 4, 2, 3, 3)),
        (InstanceMap(4), (5, 4, 7)),
        (InstanceMap(4), (5, 4, 3, 3)),
        (InstanceMap(4), (5, 4, 2, 3, 3)),
        (LayerMap(6), (5, 6)),
        (LayerMap([4, 3, 3]), (5, 4, 3, 3)),
        (LayerMap([3, 3]), (2, 5, 4, 3, 3)),
    ],
)
def test_shapes_two_to_five_d(layer: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    layer.eval()
    assert layer(x).shape == x.shape


def test_instance_map_is_group_map_with_one_group_per_channel() -> None:
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(InstanceMap(4)(x), GroupMap(4, 4, affine=False)(x))


def test_layer_map_maps_each_sample_to_the_target() -> None:
    x = torch.randn(3, 4, 10, 10).exp()
    y = LayerMap([4, 10, 10], target="uniform")(x).detach()
    sorted_rows = y.reshape(3, -1).sort(-1).values
    torch.testing.assert_close(sorted_rows, sorted_rows[:1].expand(3, -1))
    assert float(sorted_rows.max()) < 3**0.5


@pytest.mark.parametrize("grad", GRAD_NAMES)
@pytest.mark.parametrize("kind", ["group", "instance", "layer"])
def test_gradient_reaches_layers_below_and_parameters(grad: str, kind: str) -> None:
    torch.manual_seed(0)
    norm = {
        "group": GroupMap(2, 4, grad=grad),
        "instance": InstanceMap(4, affine=True, grad=grad),
        "layer": LayerMap([4, 6, 6], grad=grad),
    }[kind]
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm, nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 6, 6)), torch.arange(8) % 3)
    loss.backward()
    conv = model[0]
    assert isinstance(conv, nn.Conv2d) and conv.weight.grad is not None
    assert float(conv.weight.grad.abs().sum()) > 0
    for p in norm.parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_learnable_target_trains() -> None:
    layer = GroupMap(1, 2, target="learnable")
    out = layer(torch.randn(4, 2, 9))
    (out**3).sum().backward()
    assert layer.target_module is not None
    for p in layer.target_module.parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0
    q = MonotoneTarget(8)()
    assert bool((q[1:] > q[:-1]).all())


def test_running_knots_give_a_consistent_deterministic_eval_map() -> None:
    torch.manual_seed(0)
    layer = GroupMap(2, 4, track_running_stats=True, momentum=None)
    shift = torch.tensor([0.0, 0.0, 3.0, 3.0]).view(1, 4, 1, 1)
    for _ in range(30):
        layer(torch.randn(16, 4, 16, 16).exp() + shift)
    assert layer.num_batches_tracked is not None and int(layer.num_batches_tracked) == 30
    x = torch.randn(16, 4, 16, 16).exp() + shift
    train_out = layer(x).detach()
    layer.eval()
    eval_out = layer(x)
    gap = (eval_out - train_out).abs()
    assert float(gap.mean()) < 0.08 and float(gap.quantile(0.99)) < 0.35
    assert torch.equal(layer(x[3:4]), eval_out[3:4])  # batch size 1, batch-independent
    assert torch.equal(layer(x), eval_out)


def test_momentum_ema_update() -> None:
    layer = GroupMap(1, 1, track_running_stats=True, momentum=0.5, n_knots=4)
    assert layer.running_knots is not None
    start = layer.running_knots.clone()
    x = torch.arange(8.0).view(1, 1, 8)
    layer(x)
    batch = torch.tensor([[0.5, 2.5, 4.5, 6.5]])  # Hazen quantiles of 0..7 at (k + 1/2)/4
    torch.testing.assert_close(layer.running_knots, 0.5 * start + 0.5 * batch)
    layer.reset_running_stats()
    torch.testing.assert_close(layer.running_knots, start)


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_running_knots_are_the_batch_mean_of_clean_group_quantiles(eps: float) -> None:
    # the knots reuse the map's sorted rows; with tie noise they must still come from the clean input
    x = torch.randn(5, 6, 7, 3, generator=torch.Generator().manual_seed(2))
    x[:, :, :2] = 0.0
    layer = GroupMap(3, 6, track_running_stats=True, momentum=1.0, n_knots=9, eps=eps)
    layer(x)
    want = empirical_quantiles(x.reshape(5, 3, -1), knot_levels(9)).mean(0)
    torch.testing.assert_close(layer.running_knots, want.float())


def test_tie_noise_is_seeded_and_off_in_eval() -> None:
    x = torch.zeros(2, 2, 4, 4)
    a, b = GroupMap(1, 2, eps=1e-3, seed=5), GroupMap(1, 2, eps=1e-3, seed=5)
    assert torch.equal(a(x), b(x)) and a(x).unique().numel() > 1
    a.eval()
    assert a(x).unique().numel() == 1


def test_deepcopy_and_state_dict_round_trip() -> None:
    layer = GroupMap(2, 4, track_running_stats=True, eps=0.01)
    layer(torch.randn(3, 4, 5, 5))
    clone = copy.deepcopy(layer)
    fresh = GroupMap(2, 4, track_running_stats=True, eps=0.01)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 5, 5)
    for m in (layer, clone, fresh):
        m.eval()
    assert torch.equal(layer(x), clone(x)) and torch.equal(layer(x), fresh(x))


def test_half_precision_and_channels_last() -> None:
    layer = GroupMap(2, 4)
    x = torch.randn(2, 4, 6, 6)
    assert layer(x.half()).dtype == torch.float16
    y = layer(x.to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, layer(x))


def test_blend_zero_is_the_torch_norm() -> None:
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(GroupMap(2, 4, blend=0.0)(x), nn.GroupNorm(2, 4)(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(LayerMap([5, 5], blend=0.0)(x), nn.LayerNorm([5, 5])(x), atol=1e-5, rtol=1e-5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        GroupMap(3, 4)
    with pytest.raises(ValueError, match=r"shape \(N, 4, \*\)"):
        GroupMap(2, 4)(torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match="valid names: uniform, gaussian, cauchy, learnable"):
        GroupMap(2, 4, target="student")
    with pytest.raises(ValueError, match="valid: ecdf, ste, softrank"):
        GroupMap(2, 4, grad="exact")
    with pytest.raises(ValueError, match="eps"):
        GroupMap(2, 4, eps=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        GroupMap(2, 4, momentum=0.0)
    with pytest.raises(ValueError, match="n_knots"):
        GroupMap(2, 4, n_knots=1)
    with pytest.raises(ValueError, match="spatial"):
        InstanceMap(4)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="ending in"):
        LayerMap([3, 4])(torch.randn(2, 4, 3))
    with pytest.raises(TypeError, match="target must be"):
        GroupMap(2, 4, target=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating-point input"):
        GroupMap(2, 4)(torch.ones(2, 4, 3, dtype=torch.long))


def test_small_cnn_with_group_map_learns_real_digits() -> None:
    torch.manual_seed(0)
    train, test = load("digits", "train"), load("digits", "test")
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        GroupMap(2, 8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        GroupMap(2, 8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        for idx in torch.randperm(len(train), generator=gen).split(64):
            loss = nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(test.images).argmax(1) == test.labels).float().mean())
    assert acc > 0.85
