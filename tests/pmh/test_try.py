import json

import torch
from torch import nn

from shiftlab.pmh._arms_data import ArmsData
from shiftlab.pmh._train_config import TrainConfig
from shiftlab.pmh._try import PMHReport, try_pmh


def _planted(n: int, shift: bool, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Label from axis 0; axis 1 copies the label at the source (a shortcut), is noise at deploy."""
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 6, generator=g) * 0.5
    x[:, 0] += 1.5 * (2 * y - 1)
    if shift:
        x[:, 1] += 3.0 * torch.randn(n, generator=g)
    else:
        x[:, 1] += 1.5 * (2 * y - 1)
    return x, y


def _data() -> ArmsData:
    g = torch.Generator().manual_seed(0)
    pool_x, pool_y = _planted(200, True, g)
    return ArmsData(
        source_train=_planted(300, False, g),
        source_val=_planted(100, False, g),
        target_pool=pool_x,
        target_pool_labels=pool_y,
        target_val=_planted(100, True, g),
        target_holdout=_planted(300, True, g),
    )


def _factory() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))


def test_planted_shortcut_ships_and_the_report_is_complete(tmp_path) -> None:
    report = try_pmh(
        _factory,
        _data(),
        strengths=(0.3, 3.0),
        config=TrainConfig(epochs=5, batch_size=60, lr=1e-2, device="cpu", estimator="fd"),
        quiet=True,
    )
    assert isinstance(report, PMHReport)
    means = {
        r["arm"]: r["deploy_mean"] for r in report.arms_table if r["selection"] in ("target_val", "fixed")
    }
    assert means["matched"] > means["baseline"] + 0.05
    assert means["matched"] > means["isotropic"] and means["matched"] > means["wrong"]
    assert report.verdict.verdict == "SHIP", report.deploy_summary()
    assert "source_val" in report.other_verdicts
    payload = json.loads(report.to_json())
    assert payload["verdict"]["verdict"] == "SHIP" and len(payload["seeds"]) == 3
    paths = report.save(tmp_path)
    assert "data:image/png;base64," in paths["html"].read_text()
    assert "Verdict: SHIP" in report.deploy_summary()


def test_user_model_is_unchanged() -> None:
    torch.manual_seed(0)
    model = _factory()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try_pmh(
        model,
        _data(),
        seeds=(0,),
        strengths=(1.0,),
        config=TrainConfig(epochs=1, batch_size=100, device="cpu"),
        quiet=True,
    )
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
