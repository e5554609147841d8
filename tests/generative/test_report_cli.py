"""Reports (JSON, HTML, figures), metrics with units, the toy runner, the `perturb` CLI and the doctests."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
import typer
from typer.testing import CliRunner

import shiftlab.generative as generative
from shiftlab.cli._generative import generative_app
from shiftlab.generative import (
    ConvGenerator,
    PerturbConfig,
    TargetPerturber,
    _config,
    _congestion,
    _fields,
    _metrics,
    _models,
    _perturb,
    _pretrain,
    _pullback,
    _samplers,
    _toy,
    compare_samples,
    mode_coverage,
    run_toy,
)

TINY = {"n_particles": 64, "n_validation": 64, "max_steps": 2}


@pytest.mark.parametrize(
    "module",
    [_config, _congestion, _fields, _metrics, _models, _perturb, _pretrain, _pullback, _samplers, _toy],
    ids=lambda m: m.__name__,
)
def test_docstring_examples(module: ModuleType) -> None:
    pytest.importorskip("ot")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_every_public_function_has_an_example() -> None:
    for name in generative.__all__:
        obj = getattr(generative, name)
        if callable(obj) and not isinstance(obj, type):
            assert obj.__doc__ is not None and ">>>" in obj.__doc__, name


def test_compare_samples_units() -> None:
    pytest.importorskip("ot")
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = compare_samples(x, x + torch.tensor([3.0, 4.0], dtype=torch.float64), blur=0.5)
    assert d.w2 == pytest.approx(5.0, rel=1e-9)  # a distance
    assert d.sliced_w2 <= d.w2 + 1e-12
    # for a translation S_eps = |c|^2 at every blur (the linear cost terms are fixed by the marginals)
    assert d.sinkhorn == pytest.approx(25.0, rel=1e-3)  # a squared distance


def test_mode_coverage_planted() -> None:
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = torch.cat([centers[0].expand(6, 2), centers[1].expand(3, 2), torch.tensor([[5.0, 5.0]])])
    cov = mode_coverage(pts, centers, radius=1.0)
    assert cov.occupancy == (0.6, 0.3, 0.0) and cov.off_mode == pytest.approx(0.1)
    assert cov.n_covered == 2 and cov.max_error == pytest.approx(1 / 3)


def test_result_json_html_and_figures(tmp_path: Path) -> None:
    pytest.importorskip("ot")
    target = generative.four_gaussians().sample(300, torch.Generator().manual_seed(0))
    res = TargetPerturber(generative.Generator(hidden=(16,)), target, PerturbConfig(**TINY)).run()  # type: ignore[arg-type]
    payload = json.loads(res.to_json())
    assert payload["kind"] == "generative-perturb" and len(payload["history"]) == 2
    assert "generator" not in payload and payload["config"]["max_steps"] == 2
    assert set(res.figures()) == {"samples", "w2 trajectory"}
    paths = res.save(tmp_path / "rep")
    assert "data:image/png;base64" in paths["html"].read_text()
    assert res.headline().startswith("target perturbation")


def test_image_generator_result_has_image_grids() -> None:
    pytest.importorskip("ot")
    gen = ConvGenerator(latent_dim=4, resolution=8, channels=4)
    target = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    res = TargetPerturber(gen, target, PerturbConfig(**TINY)).run()  # type: ignore[arg-type]
    assert res.data_shape == (1, 8, 8)
    fig = res.figures()["samples"]
    assert len(fig.axes) == 3 and fig.axes[0].images


def test_run_toy_reports_test_metrics_and_floor() -> None:
    pytest.importorskip("ot")
    rep = run_toy("evidence", PerturbConfig(**TINY), pretrain_steps=3, evidence_size=30, n_test=128)  # type: ignore[arg-type]
    d = rep.to_dict()
    assert d["kind"] == "generative-toy" and d["run"]["section"] == "evidence"
    assert rep.test_w2_floor < rep.test_w2_before
    assert len(rep.coverage_after.occupancy) == 4
    with pytest.raises(ValueError, match="section"):
        run_toy("both", PerturbConfig(**TINY))  # type: ignore[arg-type]


def test_cli_target_json_plot_and_config(tmp_path: Path) -> None:
    pytest.importorskip("ot")
    cfg = tmp_path / "cfg.yaml"
    PerturbConfig(**TINY).to_yaml(cfg)  # type: ignore[arg-type]
    app = typer.Typer()
    app.add_typer(generative_app, name="perturb")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "perturb",
            "target",
            "--config",
            str(cfg),
            "--pretrain-steps",
            "2",
            "--json",
            "--plot",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["kind"] == "generative-toy" and payload["run"]["steps_run"] == 2
    assert (
        (out / "report.html").exists()
        and (out / "samples.png").exists()
        and (out / "w2_trajectory.png").exists()
    )


def test_cli_plot_needs_out() -> None:
    app = typer.Typer()
    app.add_typer(generative_app, name="perturb")
    result = CliRunner().invoke(app, ["perturb", "evidence", "--plot"])
    assert result.exit_code != 0 and "--out" in result.output
