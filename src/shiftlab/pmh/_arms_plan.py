"""Planning for :func:`run_arms`: argument checks, where Σ comes from, which reference arms apply."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from shiftlab.pmh._arms_data import ArmsData
from shiftlab.pmh._arms_result import REFERENCE_ARMS
from shiftlab.pmh._augment import DIGIT_AUGMENTATIONS
from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._layers import INPUT

#: Estimators :func:`run_arms` builds from the data; for other kinds pass ``estimate`` + ``estimate_rows``.
ESTIMATE_KINDS: tuple[str, ...] = ("domain", "subspace", "augmentation")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where Σ comes from: estimator and its keywords (``kind=None``: prebuilt), whether it needs a
    trained model, whether it used target labels, and the target rows it used."""

    kind: str | None
    kwargs: dict[str, Any]
    model_based: bool
    uses_target_labels: bool
    rows: torch.Tensor


def check_choices(values: Sequence[str], valid: Sequence[str], what: str) -> tuple[str, ...]:
    """A non-empty tuple of distinct names from ``valid``."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{what} must be a non-empty sequence of names from {', '.join(valid)}")
    unknown = [v for v in values if v not in valid]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {', '.join(valid)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} has repeated names: {list(values)}")
    return tuple(values)


def check_numbers(
    seeds: Sequence[int], strengths: Sequence[float]
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Distinct seeds >= 0 and distinct positive strengths (sorted ascending)."""
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be a non-empty sequence of ints >= 0; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct; got {list(seeds)}")
    ok = all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in strengths
    )
    if not strengths or not ok:
        raise ValueError(f"strengths must be a non-empty sequence of finite numbers > 0; got {strengths!r}")
    if len(set(strengths)) != len(strengths):
        raise ValueError(f"strengths must be distinct; got {list(strengths)}")
    return tuple(seeds), tuple(sorted(float(v) for v in strengths))


def initial_model(model: nn.Module | Callable[[], nn.Module], seed: int) -> nn.Module:
    """The seed's starting weights: the factory under ``torch.manual_seed(seed)`` (global RNG restored)."""
    if isinstance(model, nn.Module):
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built = model()
    if not isinstance(built, nn.Module):
        raise TypeError(f"the model factory must return a torch.nn.Module; got {type(built).__name__}")
    return built


def make_plan(
    data: ArmsData,
    kind: str | None,
    kwargs: Mapping[str, Any] | None,
    estimate: NuisanceEstimate | None,
    estimate_rows: torch.Tensor | None,
    site: str,
    augmentations: Sequence[Any] | None,
) -> Plan:
    """Validate the Σ arguments and decide where Σ comes from (no estimation yet)."""
    if estimate is not None:
        if kind is not None or kwargs:
            raise ValueError("pass either estimate= (with estimate_rows=) or estimate_kind=, not both")
        if not isinstance(estimate, NuisanceEstimate):
            raise TypeError(f"estimate must be a NuisanceEstimate; got {type(estimate).__name__}")
        if not isinstance(estimate_rows, torch.Tensor):
            raise ValueError(
                "a prebuilt estimate needs estimate_rows=: the target rows it was computed from (an empty "
                "(0, ...) tensor if it used none), so that their disjointness from the holdout can be checked"
            )
        if estimate.site != site:
            raise ValueError(
                f"the estimate lives at site {estimate.site!r}; run_arms was given site={site!r}"
            )
        return Plan(None, {}, False, False, estimate_rows)
    if estimate_rows is not None:
        raise ValueError(
            "estimate_rows= goes with a prebuilt estimate=; run_arms knows the rows it estimates from"
        )
    kind = "domain" if kind is None else kind
    if kind not in ESTIMATE_KINDS:
        raise ValueError(
            f"run_arms builds estimate_kind from {', '.join(ESTIMATE_KINDS)}; for {kind!r} build the "
            "estimate with estimate_nuisance and pass estimate= and estimate_rows="
        )
    (xs, ys), pool = data.source_train, data.target_pool
    if kind == "augmentation":
        call: dict[str, Any] = {
            "x": xs,
            "augmentations": tuple(augmentations or DIGIT_AUGMENTATIONS),
            "labels": ys,
        }
        rows = pool[:0]
    else:
        call = {"source": xs, "source_labels": ys, "target": pool, "target_labels": data.target_pool_labels}
        rows = pool
    call.update(dict(kwargs or {}))
    for key in ("model", "site"):
        if key in call:
            raise ValueError(f"do not pass {key!r} in estimate_kwargs; run_arms passes site= and the model")
    if kind == "subspace" and call.get("target_labels") is None:
        raise ValueError("the subspace estimator needs target labels: the data has no target_pool_labels")
    labels = kind != "augmentation" and call.get("target_labels") is not None
    pseudo = kind == "domain" and not labels and call.get("source_labels") is not None
    return Plan(kind, call, site != INPUT or pseudo, labels, rows)


def reference_arms(
    requested: Sequence[str] | None, plan: Plan, estimate: NuisanceEstimate | None
) -> tuple[str, ...]:
    """The reference arms to run: those requested (each must apply) or all that apply."""
    applicable = ["coral"]
    if plan.kind == "augmentation" or (estimate is not None and estimate.estimator == "augmentation"):
        applicable.insert(0, "augmentation")
    if plan.uses_target_labels:
        applicable.insert(0, "target_rows")
    if requested is None:
        return tuple(r for r in REFERENCE_ARMS if r in applicable)
    chosen = check_choices(requested, REFERENCE_ARMS, "references") if requested else ()
    for ref in chosen:
        if ref not in applicable:
            why = {
                "augmentation": "Σ did not come from augmentations",
                "target_rows": "Σ used no labelled target rows",
            }
            raise ValueError(f"reference arm {ref!r} does not apply here: {why.get(ref, '')}")
    return chosen


def describe(plan: Plan, estimate: NuisanceEstimate, data: ArmsData, how: Mapping[str, str]) -> str:
    """One sentence: which rows estimated Σ and how their disjointness from the holdout was checked."""
    n_hold = data.target_holdout[0].shape[0]
    checks = "; ".join(f"{name} checked by {method}" for name, method in how.items())
    if plan.kind is None:
        source = f"a prebuilt {estimate.estimator} estimate from {plan.rows.shape[0]} target rows"
    elif plan.kind == "augmentation":
        source = f"augmentation estimator on {data.source_train[0].shape[0]} source rows (no target rows)"
    else:
        labels = "with labels" if plan.uses_target_labels else "without labels"
        per_seed = " (per seed, with the seed's trained baseline)" if plan.model_based else ""
        source = f"{plan.kind} estimator on {plan.rows.shape[0]} target_pool rows {labels}{per_seed}"
    return f"Σ at {estimate.site!r}: {source}; disjoint from the {n_hold}-row deploy holdout ({checks})"
