import warnings

import pytest
import torch

from shiftlab.pmh._budget import LossBudget


def _penalty(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.tensor(1.0, requires_grad=True)
    return w, scale * w**2


@pytest.mark.parametrize("scale", [1e-4, 0.1, 50.0, 1e6])
def test_ratio_stays_in_band_and_gradient_survives(scale: float) -> None:
    budget = LossBudget(min_ratio=0.05, max_ratio=0.3, warmup=0.0)
    budget.start(total_steps=4)
    task = torch.tensor(2.0)
    for _ in range(4):
        w, penalty = _penalty(scale)
        total = budget.combine(task, penalty, strength=1.0)
        applied = float(total.detach() - task) / float(task)
        assert 0.05 - 1e-6 <= applied <= 0.3 + 1e-6
        total.backward()
        assert w.grad is not None and float(w.grad) > 0  # capped or boosted, the penalty still has a gradient
    epoch = budget.end_epoch()
    assert epoch.steps == 4 and epoch.active == 4
    assert (epoch.scaled_down > 0) == (scale > 0.6)
    assert (epoch.scaled_up > 0) == (scale < 0.1)


def test_warmup_ramps_the_coefficient() -> None:
    budget = LossBudget(min_ratio=0.1, max_ratio=0.2, warmup=0.5)
    budget.start(total_steps=4)
    applied = []
    for _ in range(4):
        _, penalty = _penalty(10.0)
        total = budget.combine(torch.tensor(1.0), penalty, strength=1.0)
        applied.append(float(total.detach()) - 1.0)
    assert applied == pytest.approx([0.0, 0.1, 0.2, 0.2])


def test_warns_once_when_never_active() -> None:
    budget = LossBudget(warmup=0.0)
    budget.start(total_steps=2)
    for _ in range(2):
        budget.combine(torch.tensor(1.0), torch.tensor(0.0), strength=1.0)
    with pytest.warns(RuntimeWarning, match="never active"):
        budget.finish()
    active = LossBudget(warmup=0.0)
    active.start(total_steps=1)
    active.combine(torch.tensor(1.0), torch.tensor(1.0), strength=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        active.finish()


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="min_ratio < max_ratio"):
        LossBudget(min_ratio=0.3, max_ratio=0.1)
    with pytest.raises(ValueError, match="warmup"):
        LossBudget(warmup=1.0)
    with pytest.raises(RuntimeError, match="start"):
        LossBudget().combine(torch.tensor(1.0), torch.tensor(1.0), 1.0)
    budget = LossBudget()
    budget.start(1)
    with pytest.raises(FloatingPointError, match="non-finite"):
        budget.combine(torch.tensor(float("nan")), torch.tensor(1.0), 1.0)
