"""Samplers (stratified mixtures, evidence, broadened KDE), the config dataclass and the model shapes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from shiftlab.generative import (
    KDE_SCHEDULES,
    ConvCritic,
    ConvGenerator,
    Critic,
    GaussianMixture,
    Generator,
    PerturbConfig,
    broadened_kde,
    evidence_domains,
    four_gaussians,
    mode_coverage,
)


def test_stratified_mixture_has_exact_component_counts() -> None:
    mix = GaussianMixture([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], std=0.1, weights=[0.5, 0.3, 0.2])
    labels = mix.components(101, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels, minlength=3).tolist()
    # 101 * w = (50.5, 30.3, 20.2): floors (50, 30, 20) and the one left over goes to the largest remainder
    assert counts == [51, 30, 20]
    x = mix.sample(101, torch.Generator().manual_seed(0))
    cov = mode_coverage(x, mix.centers, radius=1.0, weights=mix.weights)
    assert cov.max_error <= 1 / 101 + 1e-12 and cov.off_mode == 0.0


def test_multinomial_sampling_is_available_and_noisier() -> None:
    mix = four_gaussians()
    errs = []
    for stratified in (True, False):
        x = mix.sample(400, torch.Generator().manual_seed(3), stratified=stratified)
        errs.append(mode_coverage(x, mix.centers, radius=1.5).max_error)
    assert errs[0] <= 1 / 400 + 1e-12 < errs[1]


def test_four_gaussians_shift_and_evidence() -> None:
    base = four_gaussians()
    moved = base.shifted([1.8, 1.8])
    assert torch.allclose(moved.centers - base.centers, torch.tensor([1.8, 1.8], dtype=torch.float64))
    doms = evidence_domains(base, [[1.8, 1.8], [1.5, 2.1]], [30, 50], seed=1)
    assert [d.shape for d in doms] == [torch.Size([30, 2]), torch.Size([50, 2])]
    again = evidence_domains(base, [[1.8, 1.8], [1.5, 2.1]], [30, 50], seed=1)
    assert all(torch.equal(a, b) for a, b in zip(doms, again, strict=True))
    with pytest.raises(ValueError, match="sizes must be one int"):
        evidence_domains(base, [[0.0, 0.0]], [3, 4])


def test_mixture_validation() -> None:
    with pytest.raises(ValueError, match="std"):
        GaussianMixture([[0.0]], std=0.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], std=1.0, weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="offset"):
        four_gaussians().shifted([1.0])


@pytest.mark.parametrize("schedule", KDE_SCHEDULES)
def test_kde_bandwidth_schedule_endpoints(schedule: str) -> None:
    kde = broadened_kde(torch.randn(60, 2, generator=torch.Generator().manual_seed(0)), 4.0, schedule)  # type: ignore[arg-type]
    h0 = kde.base_bandwidth
    assert kde.bandwidth(0.0) == pytest.approx(4.0 * h0)
    expected_end = 4.0 * h0 if schedule == "constant" else h0
    assert kde.bandwidth(1.0) == pytest.approx(expected_end)
    values = [kde.bandwidth(p / 10) for p in range(11)]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(values))


def test_loo_bandwidth_resolves_modes_that_silverman_blurs() -> None:
    base = four_gaussians()
    pts = base.sample(300, torch.Generator().manual_seed(0))
    kde = broadened_kde(pts)
    d = 2
    silverman = float(pts.std(dim=0).mean()) * (4.0 / ((d + 2) * 300)) ** (1.0 / (d + 4))
    assert kde.base_bandwidth < 0.5 * silverman
    assert 0.05 < kde.base_bandwidth < base.std


def test_kde_samples_have_the_bandwidth_noise() -> None:
    pts = torch.zeros(5, 2)
    pts[:, 0] = torch.arange(5.0) * 100
    kde = broadened_kde(pts, factor=2.0, schedule="linear", bandwidth=0.5)
    draws = kde.sample(4000, 0.0, torch.Generator().manual_seed(0))
    offsets = draws - pts[(draws[:, 0] / 100).round().long().clamp(0, 4)]
    assert float(offsets.std()) == pytest.approx(1.0, rel=0.05)


def test_kde_validation() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        broadened_kde(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="factor"):
        broadened_kde(torch.randn(10, 2), factor=0.5)
    with pytest.raises(ValueError, match="schedule"):
        broadened_kde(torch.randn(10, 2), schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same dimension"):
        broadened_kde([torch.randn(5, 2), torch.randn(5, 3)])


def test_config_yaml_round_trip(tmp_path: Path) -> None:
    cfg = PerturbConfig(
        max_steps=7, speed_cap=0.25, capacity="interpolation", tol_w2=0.4, update="first-order"
    )
    path = cfg.to_yaml(tmp_path / "cfg.yaml")
    assert PerturbConfig.from_yaml(path) == cfg
    (tmp_path / "partial.yaml").write_text("max_steps: 3\n")
    assert PerturbConfig.from_yaml(tmp_path / "partial.yaml") == PerturbConfig(max_steps=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_particles": 0}, ValueError, "n_particles"),
        ({"speed_cap": math.inf}, ValueError, "speed_cap"),
        ({"update": "newton"}, ValueError, "one of"),
        ({"accept_reject": "yes"}, TypeError, "bool"),
        ({"holdout_fraction": 1.0}, ValueError, "holdout_fraction"),
        ({"step_size": 1.5}, ValueError, "step_size"),
        ({"kde_factor": 0.5}, ValueError, "kde_factor"),
        ({"virtual_weight": 0.0, "sinkhorn_weight": 0.0}, ValueError, "both be 0"),
        ({"entropy_weight": -1.0}, ValueError, "entropy_weight"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PerturbConfig(**kwargs)  # type: ignore[arg-type]


def test_config_unknown_key_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"valid keys: .*speed_cap"):
        PerturbConfig.from_dict({"speedcap": 1.0})


@pytest.mark.parametrize("resolution", [8, 28])
def test_conv_pair_shapes_and_range(resolution: int) -> None:
    gen = ConvGenerator(latent_dim=6, resolution=resolution, channels=4)
    imgs = gen(torch.randn(3, 6))
    assert imgs.shape == (3, 1, resolution, resolution)
    assert bool(((imgs >= 0) & (imgs <= 1)).all())
    assert ConvCritic(resolution=resolution, channels=4)(imgs).shape == (3,)
    assert ConvCritic(resolution=resolution, channels=4)(imgs.reshape(3, -1)).shape == (3,)


def test_model_validation() -> None:
    with pytest.raises(ValueError, match="resolution"):
        ConvGenerator(resolution=16)
    with pytest.raises(ValueError, match="latent_dim"):
        Generator(latent_dim=0)
    with pytest.raises(ValueError, match="hidden"):
        Critic(hidden=())
