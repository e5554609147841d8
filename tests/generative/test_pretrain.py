"""WGAN-GP pretraining: penalties, gradients, checkpoints, and that it learns."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from shiftlab.functional.transport import wasserstein2
from shiftlab.generative import Critic, Generator, four_gaussians, gradient_penalty, pretrain_wgan_gp


def _linear_critic(w: list[float]) -> nn.Linear:
    lin = nn.Linear(len(w), 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([w]))
    return lin


def test_one_sided_penalty_ignores_slow_critics_two_sided_does_not() -> None:
    slow = _linear_critic([0.3, 0.4])  # |grad u| = 0.5
    pts = torch.randn(8, 2)
    assert float(gradient_penalty(slow, pts, "one-sided").detach()) == 0.0
    assert float(gradient_penalty(slow, pts, "two-sided").detach()) == pytest.approx(0.25)
    fast = _linear_critic([3.0, 4.0])  # |grad u| = 5
    assert float(gradient_penalty(fast, pts, "one-sided").detach()) == pytest.approx(16.0)
    with pytest.raises(ValueError, match="penalty"):
        gradient_penalty(fast, pts, "zero-centred")  # type: ignore[arg-type]


def test_penalty_gradient_reaches_the_critic_parameters() -> None:
    critic = Critic(hidden=(8,))
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(20.0)  # make |grad u| > 1 so the one-sided penalty is active
    gradient_penalty(critic, torch.randn(16, 2)).backward()
    # every weight shapes grad_x u; the output bias does not, so it gets no gradient
    for name, p in critic.named_parameters():
        if name.endswith("weight"):
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert critic.net[-1].bias.grad is None


def test_pretraining_learns_and_leaves_the_inputs_alone(tmp_path: Path) -> None:
    pytest.importorskip("ot")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        gen, critic = Generator(hidden=(32, 32)), Critic(hidden=(32, 32))
    g0, c0 = copy.deepcopy(gen.state_dict()), copy.deepcopy(critic.state_dict())
    base = four_gaussians()
    res = pretrain_wgan_gp(
        gen,
        critic,
        base,
        steps=150,
        n_critic=3,
        batch_size=128,
        lr=2e-3,
        seed=1,
        checkpoint_dir=tmp_path,
        checkpoint_every=100,
        log_every=50,
    )
    assert all(torch.equal(v, g0[k]) for k, v in gen.state_dict().items())
    assert all(torch.equal(v, c0[k]) for k, v in critic.state_dict().items())
    z = torch.randn(600, 2, generator=torch.Generator().manual_seed(0))
    ref = base.sample(600, torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, after = float(wasserstein2(gen(z), ref)), float(wasserstein2(res.generator(z), ref))
    assert after < 0.5 * before, (before, after)
    assert [h["step"] for h in res.history] == [50.0, 100.0, 150.0]
    assert [Path(p).name for p in res.checkpoints] == ["step_100.pt", "step_150.pt"]
    state = torch.load(res.checkpoints[-1], weights_only=True)
    reloaded = Generator(hidden=(32, 32))
    reloaded.load_state_dict(state["generator"])
    assert torch.equal(reloaded(z), res.generator(z))
    assert res.to_dict()["kind"] == "wgan-gp-pretrain" and "generator" not in res.to_dict()


def test_pretraining_accepts_a_tensor_of_real_points_and_two_sided_penalty() -> None:
    data = four_gaussians().sample(500, torch.Generator().manual_seed(0))
    res = pretrain_wgan_gp(
        Generator(hidden=(8,)), Critic(hidden=(8,)), data, steps=3, penalty="two-sided", log_every=1
    )
    assert res.penalty == "two-sided" and len(res.history) == 3


def test_pretraining_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="steps"):
        pretrain_wgan_gp(Generator(), Critic(), four_gaussians(), steps=0)
    with pytest.raises(TypeError, match="sampler"):
        pretrain_wgan_gp(Generator(), Critic(), [[0.0, 0.0]], steps=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="penalty"):
        pretrain_wgan_gp(Generator(), Critic(), four_gaussians(), penalty="none")  # type: ignore[arg-type]
