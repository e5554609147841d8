import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.functional import softplus

from shiftlab.pmh._budget import LossBudget
from shiftlab.pmh._train_config import BudgetSettings, TrainConfig


def _penalty(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    return w, scale * w**2


def _coefficient(budget: LossBudget, task: float, penalty: float, strength: float) -> float:
    """The coefficient c the budget applies, read off the gradient d(total)/dP."""
    p = torch.tensor(penalty, dtype=torch.float64, requires_grad=True)
    budget.combine(torch.tensor(task, dtype=torch.float64), p, strength).backward()
    assert p.grad is not None
    return float(p.grad)


# task loss 2, λ = 1: raw ratio = scale / 2. 0.06 → 0.03 (floor raises c by 5/3 ≤ max_boost = 2),
# 0.1 → 0.05 (in band), 50 and 1e6 → capped.
@pytest.mark.parametrize("scale", [0.06, 0.1, 0.3, 50.0, 1e6])
def test_ratio_stays_in_band_and_gradient_survives(scale: float) -> None:
    budget = LossBudget(min_ratio=0.05, max_ratio=0.3, warmup=0.0)
    budget.start(total_steps=4)
    task = torch.tensor(2.0, dtype=torch.float64)
    for _ in range(4):
        w, penalty = _penalty(scale)
        total = budget.combine(task, penalty, strength=1.0)
        applied = float(total.detach() - task) / float(task)
        assert 0.05 - 1e-9 <= applied <= 0.3 + 1e-9
        total.backward()
        assert w.grad is not None
        # capped or boosted, the penalty keeps its gradient: d/dw (c scale w²) = 2 c scale, c = applied L / P
        coefficient = applied * float(task) / scale
        assert float(w.grad) == pytest.approx(2 * coefficient * scale, rel=1e-9)
    epoch = budget.end_epoch()
    assert epoch.steps == 4 and epoch.active == 4 and epoch.boost_capped == 0
    assert (epoch.scaled_down > 0) == (scale > 0.6)
    assert (epoch.scaled_up > 0) == (scale < 0.1)
    assert epoch.max_factor == pytest.approx(min(max(scale / 2, 0.05), 0.3) / (scale / 2))


def test_coefficient_stays_bounded_as_the_penalty_vanishes() -> None:
    """P → 0 at a fixed task loss: the unbounded floor's c = ρ_min L / P would reach 1e10 λ here."""
    budget = LossBudget(min_ratio=0.05, max_ratio=0.3, warmup=0.0, max_boost=2.0)
    penalties = [10.0**-k for k in range(1, 13)]
    budget.start(total_steps=len(penalties))
    coefficients = [_coefficient(budget, 2.0, p, strength=0.5) for p in penalties]
    assert all(0 < c <= 2.0 * 0.5 * (1 + 1e-12) for c in coefficients)  # never above max_boost · λ
    assert coefficients[-1] == pytest.approx(1.0)  # the floor stopped at 2λ, it did not follow 1/P
    epoch = budget.end_epoch()
    # raw ratios 0.025, 0.0025, …: the first only just reaches the band at 2λ, the other 11 stay below it
    assert epoch.scaled_up == 12 and epoch.boost_capped == 11
    assert epoch.mean_applied_ratio < 0.05 and epoch.max_factor == pytest.approx(2.0)


def test_capped_penalty_keeps_a_nonzero_gradient_on_the_parameters() -> None:
    budget = LossBudget(min_ratio=0.05, max_ratio=0.1, warmup=0.0)
    budget.start(total_steps=1)
    layer = torch.nn.Linear(3, 1).double()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    penalty = 1e4 * (layer(x) ** 2).mean()  # raw ratio ≫ max_ratio: the cap scales c far below λ
    total = budget.combine(torch.tensor(1.0, dtype=torch.float64), penalty, strength=1.0)
    total.backward()
    c = 0.1 / float(penalty.detach())
    assert c < 1e-3
    expected = torch.autograd.grad(c * 1e4 * (layer(x) ** 2).mean(), layer.weight)[0]
    assert layer.weight.grad is not None and float(layer.weight.grad.norm()) > 0
    torch.testing.assert_close(layer.weight.grad, expected)


@settings(max_examples=200, deadline=None)
@given(
    task=st.floats(1e-3, 1e3),
    penalty=st.floats(1e-9, 1e9),
    strength=st.floats(1e-4, 1e2),
    max_boost=st.floats(1.0, 100.0),
)
def test_band_holds_when_reachable_and_the_boost_is_bounded(
    task: float, penalty: float, strength: float, max_boost: float
) -> None:
    budget = LossBudget(min_ratio=0.05, max_ratio=0.3, warmup=0.0, max_boost=max_boost)
    budget.start(total_steps=1)
    c = _coefficient(budget, task, penalty, strength)
    raw = strength * penalty / task
    applied = c * penalty / task
    assert 0 < c <= max_boost * strength * (1 + 1e-9)
    if raw * max_boost >= 0.05:  # the healthy case: the band is reachable within the bound
        assert 0.05 * (1 - 1e-9) <= applied <= 0.3 * (1 + 1e-9)
    else:  # the floor stops at max_boost · λ and says so
        assert c == pytest.approx(max_boost * strength, rel=1e-9)
        assert budget.end_epoch().boost_capped == 1


def _planted_fit(max_boost: float, steps: int = 300) -> tuple[float, float]:
    """One weight w: the task (logistic loss of a margin-1 example) wants w large; the penalty w²/10
    plays the Jacobian along Σ. Starting from w = 0.01 (a fresh network's tiny Jacobian), the raw ratio is
    about 1e-5. Returns the final w and the largest coefficient applied."""
    w = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=0.01)
    budget = LossBudget(min_ratio=0.05, max_ratio=0.3, warmup=0.0, max_boost=max_boost)
    budget.start(steps)
    largest = 0.0
    for _ in range(steps):
        optimizer.zero_grad()
        task, penalty = softplus(-w), 0.1 * w**2
        total = budget.combine(task, penalty, strength=1.0)
        largest = max(largest, float((total - task).detach() / penalty.detach()))
        total.backward()
        optimizer.step()
    return float(w.detach()), largest


def test_bounded_floor_does_not_collapse_a_planted_model() -> None:
    w, largest = _planted_fit(max_boost=2.0)
    assert w > 1.0 and largest <= 2.0 + 1e-9  # the task wins: w grows as under the plain sum
    # control: an effectively unbounded floor (the old rule) pins w near 0 with c in the millions
    w_unbounded, largest_unbounded = _planted_fit(max_boost=1e12)
    assert abs(w_unbounded) < 0.3 and largest_unbounded > 1e6


def test_real_digits_training_does_not_collapse_under_the_default_budget() -> None:
    """MNIST (5k subset) → UCI digits, input-site fd penalty at λ = 1 and lr 3e-3 (``shiftlab try --quick``'s
    rate): with the unbounded 5 % floor every seed collapsed to a constant output (source validation
    0.10–0.11 after 3 epochs, the penalty falling 100×); the default budget keeps training."""
    from shiftlab.data import two_site
    from shiftlab.pmh import PMHTrainer, digits_mlp, estimate_nuisance

    pair = two_site("mnist-5k", "digits", seed=0, sizes={"source_train": 2000, "source_val": 500})
    sigma = estimate_nuisance(
        "domain",
        source=pair.source_train.x,
        source_labels=pair.source_train.y,
        target=pair.target_pool.x,
        target_labels=pair.target_pool_labels,
    )
    torch.manual_seed(0)
    config = TrainConfig(epochs=3, lr=3e-3, strength=1.0, budget=BudgetSettings(), device="cpu")
    fit = PMHTrainer(digits_mlp(), config=config).fit(
        (pair.source_train.x, pair.source_train.y),
        estimate=sigma,
        val=(pair.source_val.x, pair.source_val.y),
        quiet=True,
    )
    last = fit.history[-1]
    assert last.val_accuracy is not None and last.val_accuracy > 0.5
    assert last.penalty > fit.history[0].penalty  # the Jacobian along Σ grows with learning, not → 0


def test_warmup_ramps_the_coefficient() -> None:
    budget = LossBudget(min_ratio=0.1, max_ratio=0.2, warmup=0.5)
    budget.start(total_steps=4)
    applied = []
    for _ in range(4):
        _, penalty = _penalty(10.0)
        total = budget.combine(torch.tensor(1.0, dtype=torch.float64), penalty, strength=1.0)
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


def test_settings_carry_max_boost() -> None:
    assert BudgetSettings().build().max_boost == 2.0
    assert TrainConfig.from_dict({"budget": {"max_boost": 3.0}}).budget == BudgetSettings(max_boost=3.0)
    off = LossBudget(min_ratio=0.05, warmup=0.0, max_boost=1.0)  # 1 turns the floor off: c never exceeds λ
    off.start(total_steps=1)
    assert _coefficient(off, 1.0, 1e-6, strength=0.5) == pytest.approx(0.5)


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="min_ratio < max_ratio"):
        LossBudget(min_ratio=0.3, max_ratio=0.1)
    with pytest.raises(ValueError, match="warmup"):
        LossBudget(warmup=1.0)
    with pytest.raises(ValueError, match="max_boost must be >= 1"):
        LossBudget(max_boost=0.5)
    with pytest.raises(ValueError, match="max_boost must be a finite number"):
        LossBudget(max_boost=math.inf)
    with pytest.raises(ValueError, match="max_boost must be a finite number"):
        BudgetSettings(max_boost=True)
    with pytest.raises(ValueError, match="raw_ratio"):
        LossBudget().factor(0.0)
    with pytest.raises(RuntimeError, match="start"):
        LossBudget().combine(torch.tensor(1.0), torch.tensor(1.0), 1.0)
    budget = LossBudget()
    budget.start(1)
    with pytest.raises(FloatingPointError, match="non-finite"):
        budget.combine(torch.tensor(float("nan")), torch.tensor(1.0), 1.0)
