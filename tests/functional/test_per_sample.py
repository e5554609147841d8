"""per_sample: vmap gradients equal a per-sample autograd loop; the Linear Gram identity equals vmap's."""

from __future__ import annotations

import copy
import doctest
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from shiftlab.functional import per_sample
from shiftlab.functional.per_sample import per_sample_gradient_gram, per_sample_gradients

CE = nn.functional.cross_entropy


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small tensors: one intra-op thread avoids thread-pool contention on a shared CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_docstring_examples() -> None:
    result = doctest.testmod(per_sample, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _loop_gradients(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reference: one backward pass per sample, in eval mode, on a copy."""
    net = copy.deepcopy(model).eval()
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for i in range(x.shape[0]):
        net.zero_grad()
        CE(net(x[i : i + 1]), t[i : i + 1]).backward()
        for n, p in net.named_parameters():
            if p.requires_grad:
                assert p.grad is not None
                out[n].append(p.grad.detach().clone())
    return {n: torch.stack(g) for n, g in out.items()}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4 * 6 * 6, 3),
    )


@pytest.mark.parametrize(("make", "shape", "classes"), [(_mlp, (10,), 4), (_cnn, (1, 8, 8), 3)])
def test_vmap_gradients_equal_the_per_sample_loop(make: object, shape: tuple[int, ...], classes: int) -> None:
    model = make()  # type: ignore[operator]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(9, *shape, generator=gen)
    t = torch.randint(0, classes, (9,), generator=gen)
    ours = per_sample_gradients(model, CE, x, t, chunk_size=4)
    ref = _loop_gradients(model, x, t)
    assert ours.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-5, atol=1e-6)


def test_frozen_parameters_are_left_out() -> None:
    model = _mlp()
    model[0].weight.requires_grad_(False)
    x, t = torch.randn(5, 10), torch.tensor([0, 1, 2, 3, 0])
    ours = per_sample_gradients(model, CE, x, t)
    assert "0.weight" not in ours and "0.bias" in ours
    torch.testing.assert_close(
        ours["2.weight"], _loop_gradients(model, x, t)["2.weight"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("bias", [True, False])
def test_gram_identity_equals_the_vmap_gram(bias: bool) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(12, 20, bias=bias), nn.GELU(), nn.Linear(20, 5, bias=bias))
    x, t = torch.randn(16, 12, dtype=torch.float64), torch.randint(0, 5, (16,))
    model = model.double()
    k_vmap = per_sample_gradient_gram(model, CE, x, t)
    k_gram = per_sample_gradient_gram(model, CE, x, t, method="linear")
    torch.testing.assert_close(k_gram, k_vmap, rtol=1e-10, atol=1e-12)
    # and both equal G G^T from the loop
    loop = _loop_gradients(model, x, t)
    g = torch.cat([v.reshape(16, -1) for v in loop.values()], dim=1)
    torch.testing.assert_close(k_vmap, g @ g.T, rtol=1e-10, atol=1e-12)


def test_model_is_not_modified() -> None:
    model = _cnn().train()
    before = copy.deepcopy(model.state_dict())
    per_sample_gradients(model, CE, torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_integer_inputs_keep_their_dtype() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Embedding(20, 6), nn.Flatten(), nn.Linear(18, 2))
    tokens = torch.randint(0, 20, (5, 3))
    grads = per_sample_gradients(model, CE, tokens, torch.tensor([0, 1, 1, 0, 1]))
    assert grads["0.weight"].shape == (5, 20, 6)


@pytest.mark.parametrize(
    ("model", "x", "match"),
    [
        (
            nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)),
            torch.randn(4, 1, 10),
            "not in an nn.Linear",
        ),
        (nn.Linear(5, 2), torch.randn(4, 3, 5), "2-D"),
    ],
)
def test_gram_identity_refuses_what_it_does_not_cover(model: nn.Module, x: torch.Tensor, match: str) -> None:
    t = torch.zeros(4, dtype=torch.long) if match != "2-D" else torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        per_sample_gradient_gram(
            model, lambda o, y: CE(o.reshape(-1, 2), y.reshape(-1)), x, t, method="linear"
        )


def test_shared_layer_is_refused() -> None:
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    with pytest.raises(ValueError, match="shared weights"):
        per_sample_gradient_gram(model, CE, torch.randn(3, 4), torch.tensor([0, 1, 2]), method="linear")


def test_bad_input_raises() -> None:
    model = _mlp()
    with pytest.raises(ValueError, match="one entry per input"):
        per_sample_gradients(model, CE, torch.randn(4, 10), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-finite"):
        per_sample_gradients(model, CE, torch.full((2, 10), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="scalar"):
        per_sample_gradients(model, lambda o, t: o.sum(dim=1), torch.randn(2, 10), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        per_sample_gradients(lambda v: v, CE, torch.randn(2, 10), torch.tensor([0, 1]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        per_sample_gradient_gram(model, CE, torch.randn(2, 10), torch.tensor([0, 1]), method="loop")  # type: ignore[arg-type]
