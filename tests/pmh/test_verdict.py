import pytest
import torch

from shiftlab.functional.crossed import crossed_bootstrap_ci
from shiftlab.pmh._verdict import DO_NOT_SHIP, EXIT_CODES, INCONCLUSIVE, SHIP, VerdictConfig, ship_verdict


def _bernoulli(p: float, k: int = 3, n: int = 500, seed: int = 0) -> torch.Tensor:
    return (torch.rand(k, n, generator=torch.Generator().manual_seed(seed)) < p).double()


def _arms(matched_gain: float, *, k: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    base = _bernoulli(0.6, k, seed=seed)
    flips = _bernoulli(matched_gain, k, seed=seed + 100)
    return {
        "baseline": base,
        "matched": torch.maximum(base, flips),
        "isotropic": torch.maximum(base, _bernoulli(0.02, k, seed=seed + 200)),
        "wrong": base.clone(),
    }


def _source(arms: dict[str, torch.Tensor], value: float = 0.95) -> dict[str, torch.Tensor]:
    return {arm: torch.full((arms[arm].shape[0],), value, dtype=torch.float64) for arm in arms}


def test_a_planted_gain_ships_with_reasons_and_exit_code() -> None:
    arms = _arms(0.4)
    verdict = ship_verdict(arms, _source(arms))
    assert verdict.verdict == SHIP and verdict.exit_code == 0
    assert any("beats baseline" in r for r in verdict.reasons)
    assert verdict.deploy_means["matched"] > verdict.deploy_means["baseline"]


def test_identical_arms_never_ship() -> None:
    base = _bernoulli(0.6)
    arms = {name: base.clone() for name in ("baseline", "matched", "isotropic", "wrong")}
    verdict = ship_verdict(arms, _source(arms))
    assert verdict.verdict == DO_NOT_SHIP
    assert verdict.exit_code == EXIT_CODES[DO_NOT_SHIP] != 0


@pytest.mark.parametrize("seed", range(8))
def test_no_shift_noise_never_ships(seed: int) -> None:
    arms = {
        name: _bernoulli(0.6, seed=seed * 10 + i)
        for i, name in enumerate(("baseline", "matched", "isotropic", "wrong"))
    }
    assert ship_verdict(arms, _source(arms)).verdict != SHIP


def test_too_few_seeds_or_a_missing_arm_is_inconclusive() -> None:
    arms = _arms(0.4, k=2)
    verdict = ship_verdict(arms, _source(arms))
    assert verdict.verdict == INCONCLUSIVE and any("seed" in r for r in verdict.reasons)
    arms = _arms(0.4)
    del arms["wrong"]
    assert ship_verdict(arms, _source(arms)).verdict == INCONCLUSIVE
    assert ship_verdict(_arms(0.4)).verdict == INCONCLUSIVE  # no source-validation numbers


def test_evidence_against_gives_do_not_ship() -> None:
    arms = _arms(0.4)
    arms["isotropic"] = torch.ones_like(arms["matched"])  # a control that beats matched
    assert ship_verdict(arms, _source(arms)).verdict == DO_NOT_SHIP
    arms = _arms(0.4)
    source = _source(arms)
    source["matched"] = source["matched"] - 0.05  # source accuracy drops five points
    verdict = ship_verdict(arms, source)
    assert verdict.verdict == DO_NOT_SHIP and any("source validation drops" in r for r in verdict.reasons)


def test_recommends_a_reference_arm_that_beats_matched() -> None:
    arms = _arms(0.2)
    arms["target_rows"] = torch.ones_like(arms["matched"])
    verdict = ship_verdict(arms, _source(arms))
    assert verdict.recommendation is not None
    assert verdict.recommendation.startswith("train on your labelled target rows instead: target_rows minus")


def test_bad_input() -> None:
    arms = _arms(0.4)
    with pytest.raises(ValueError, match="baseline"):
        ship_verdict({"matched": arms["matched"]})
    with pytest.raises(ValueError, match=r"same \(seeds, examples\) shape"):
        ship_verdict({**arms, "wrong": arms["wrong"][:, :10]})
    bad = arms["matched"].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        ship_verdict({**arms, "matched": bad})
    with pytest.raises(ValueError, match="margin"):
        VerdictConfig(margin=-0.1)


def test_crossed_bootstrap_widens_with_seed_variance() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.rand(4, 300, generator=g) + torch.tensor([[0.0], [0.5], [-0.5], [1.0]])
    both = crossed_bootstrap_ci(values, seed=1)
    examples_only = crossed_bootstrap_ci(values, seed=1, resample_rows=False)
    assert float(both.ci_high - both.ci_low) > 3 * float(examples_only.ci_high - examples_only.ci_low)
    assert both.ci_low < values.mean() < both.ci_high
    assert float(both.distribution.mean()) == pytest.approx(float(values.mean()), abs=0.05)
    same = crossed_bootstrap_ci(values, seed=1)
    torch.testing.assert_close(same.distribution, both.distribution)
