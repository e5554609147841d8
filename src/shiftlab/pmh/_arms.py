r"""``run_arms``: the PMH falsification experiment, K seeds × (baseline, matched, controls, references).

For each seed every arm starts from the same initial weights (a model factory called under that seed, or
a copy of the given model) and sees the same seeded batch order. Penalised arms train once per strength
λ; λ is chosen per arm and seed on the declared selection split (source validation, the labelled target
validation split, or both, reported side by side), never on the deploy holdout. Rows that estimate Σ,
select λ or train a reference arm are checked to be disjoint from the holdout before any training.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from shiftlab.pmh._arms_data import ArmsData, tensor_hash
from shiftlab.pmh._arms_plan import (
    ESTIMATE_KINDS,
    Plan,
    check_choices,
    check_numbers,
    describe,
    initial_model,
    make_plan,
    reference_arms,
)
from shiftlab.pmh._arms_result import (
    FIXED,
    PENALTY_ARMS,
    SELECTIONS,
    ArmRun,
    ArmsResult,
    Candidate,
)
from shiftlab.pmh._augment import DIGIT_AUGMENTATIONS
from shiftlab.pmh._controls import control_estimate
from shiftlab.pmh._deploy_metric import DeployMetric, resolve_metric
from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators import estimate_nuisance
from shiftlab.pmh._layers import INPUT, OUTPUT
from shiftlab.pmh._metrics import deploy_drift, sensitivity_ratio
from shiftlab.pmh._reference import coral_map, mix_augmentations, with_target_rows
from shiftlab.pmh._train_config import TrainConfig
from shiftlab.pmh._train_data import model_logits, progress
from shiftlab.pmh._trainer import FitResult, PMHTrainer

__all__ = ["DEFAULT_STRENGTHS", "ESTIMATE_KINDS", "run_arms"]

#: λ grid searched per penalised arm: three decades around the trainer's default 0.1.
DEFAULT_STRENGTHS: tuple[float, ...] = (0.01, 0.1, 1.0)
#: Seed of the noise draws of the drift and sensitivity metrics, the same for every arm (paired).
METRIC_SEED = 0


def _check_controls(estimate: NuisanceEstimate, arms: Sequence[str]) -> None:
    """Build every control once so that an impossible one (wrong with 2r > d, signal without labels) fails
    before training."""
    for arm in arms:
        if arm != "baseline":
            try:
                control_estimate(estimate, arm)
            except ValueError as err:
                raise ValueError(
                    f"arm {arm!r} cannot be built from the rank-{estimate.rank} estimate (d={estimate.dim}): "
                    f"{err}; pass a smaller rank in estimate_kwargs or drop the arm"
                ) from err


def _measure(
    fit: FitResult,
    estimate: NuisanceEstimate,
    data: ArmsData,
    measure: str,
    metric: DeployMetric,
    detailed: bool,
) -> dict[str, Any]:
    model = fit.model
    out: dict[str, Any] = {"target_val_accuracy": None, "target_val_score": None}
    splits = {"deploy": data.target_holdout, "source_val": data.source_val, "target_val": data.target_val}
    for name, split in splits.items():
        if split is None:
            continue
        logits, labels = model_logits(model, split[0]), split[1].cpu()
        correct = logits.argmax(dim=1) == labels
        scores = metric.score(logits, labels)
        out[f"{name}_accuracy"], out[f"{name}_score"] = float(correct.double().mean()), float(scores.mean())
        if name == "deploy":
            out["correct"], out["scores"] = correct, scores
    if detailed:
        xh = data.target_holdout[0]
        drift = deploy_drift(model, estimate, xh, measure=measure, seed=METRIC_SEED)
        out["drift_sigma"], out["drift_complement"] = drift.along, drift.complement
        out["sensitivity_ratio"] = sensitivity_ratio(model, estimate, xh, measure=measure, seed=METRIC_SEED)
    return out


def _run(
    arm: str, seed: int, selection: str, fit: FitResult, metrics: dict[str, Any], cands: tuple[Candidate, ...]
) -> ArmRun:
    return ArmRun(
        arm=arm,
        seed=seed,
        selection=selection,
        strength=fit.strength,
        correct=metrics["correct"],
        scores=metrics["scores"],
        deploy_score=metrics["deploy_score"],
        deploy_accuracy=metrics["deploy_accuracy"],
        source_val_accuracy=metrics["source_val_accuracy"],
        target_val_accuracy=metrics["target_val_accuracy"],
        drift_sigma=metrics["drift_sigma"],
        drift_complement=metrics["drift_complement"],
        sensitivity_ratio=metrics["sensitivity_ratio"],
        history=fit.history,
        candidates=cands,
    )


def run_arms(
    model: nn.Module | Callable[[], nn.Module],
    data: Any,
    *,
    estimate_kind: str | None = None,
    estimate_kwargs: Mapping[str, Any] | None = None,
    estimate: NuisanceEstimate | None = None,
    estimate_rows: torch.Tensor | None = None,
    arms: Sequence[str] = ("baseline", "matched", "isotropic", "wrong"),
    references: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    selection: str = "both",
    site: str = INPUT,
    measure: str = OUTPUT,
    augmentations: Sequence[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] | None = None,
    config: TrainConfig | None = None,
    metric: str | DeployMetric = "accuracy",
    quiet: bool = False,
) -> ArmsResult:
    r"""Train every arm for every seed and measure it on the deploy holdout.

    Parameters
    ----------
    model
        A zero-argument factory (called under ``torch.manual_seed(seed)`` per seed, the global RNG
        restored afterwards) or a model whose weights every seed starts from (seeds then vary only
        the data order and the probes). Never modified.
    data
        A :class:`~shiftlab.data.SitePair` or an :class:`ArmsData`.
    estimate_kind, estimate_kwargs
        Build Σ from the data: ``"domain"`` (default; labelled when the pool has labels),
        ``"subspace"`` or ``"augmentation"`` (source rows moved by ``augmentations``); keywords override
        the ones filled from the data (e.g. ``{"target_labels": None, "rank": 8}``). A model-based
        estimate (a layer ``site``, or ``domain`` with pseudo-labels) is made per seed with that seed's
        trained baseline.
    estimate, estimate_rows
        Or a prebuilt matched Σ and the target rows it was computed from (checked against the holdout).
    arms
        Penalised arms from ``baseline`` (λ = 0), ``matched``, ``isotropic``, ``wrong``, ``signal``.
    references
        Reference arms; default every one that applies: ``target_rows`` (Σ used target labels),
        ``augmentation`` (Σ came from augmentations), ``coral`` (always).
    seeds
        K seeds (3 by default).
    strengths
        λ grid for the penalised arms (sorted ascending; ties in selection go to the weaker λ).
    selection
        ``"source_val"``, ``"target_val"`` or ``"both"`` (each penalised arm gets one run per split).
    site, measure
        Perturbation site and measured layer (as in :class:`PMHTrainer`).
    augmentations
        ``aug(x, generator)`` callables for ``estimate_kind="augmentation"`` and its reference arm
        (default :data:`~shiftlab.pmh.DIGIT_AUGMENTATIONS`).
    config
        :class:`TrainConfig`; ``seed`` and ``strength`` are set per run.
    metric
        The deploy metric (:class:`DeployMetric` or a built-in name: ``accuracy``,
        ``balanced_accuracy``, ``neg_log_loss``, ``neg_brier``): λ is chosen by it on the selection split
        and the verdict compares it. Accuracy is always recorded beside it.
    quiet
        No progress bar.

    Returns
    -------
    ArmsResult

    Raises
    ------
    ValueError
        Unknown arms/references/selection, a missing target validation split, Σ-estimation, selection
        or reference rows that overlap the holdout (leakage), and the other checks above, all before
        training.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> def xy(n, shift=0.0):
    ...     x = torch.randn(n, 4, generator=g); y = (x[:, 0] > 0).long(); x[:, 1] += shift
    ...     return x, y
    >>> (xp, yp) = xy(40, 2.0)
    >>> data = ArmsData(xy(200), xy(100), xp, xy(100, 2.0), target_pool_labels=yp, target_val=xy(50, 2.0))
    >>> net = lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> res = run_arms(net, data, seeds=(0, 1), strengths=(0.1,), quiet=True,
    ...                config=TrainConfig(epochs=2, batch_size=50, device="cpu"))
    >>> res.correctness("matched").shape, res.arms
    (torch.Size([2, 100]), ('baseline', 'matched', 'isotropic', 'wrong', 'target_rows', 'coral'))
    >>> [(row["arm"], row["selection"]) for row in res.table()][:3]
    [('baseline', 'fixed'), ('matched', 'source_val'), ('matched', 'target_val')]
    >>> res.source_val("matched", "source_val").shape, res.runs_for("matched")[0].selection
    (torch.Size([2]), 'target_val')
    """
    arms_data = data if isinstance(data, ArmsData) else ArmsData.from_site_pair(data)
    deploy_metric = resolve_metric(metric)
    penalty_arms = check_choices(arms, PENALTY_ARMS, "arms")
    seed_list, grid = check_numbers(seeds, strengths)
    if selection not in (*SELECTIONS, "both"):
        raise ValueError(f"selection must be 'source_val', 'target_val' or 'both'; got {selection!r}")
    if selection != "source_val" and arms_data.target_val is None:
        raise ValueError(f"selection={selection!r} needs a labelled target_val split; the data has none")
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    if not (isinstance(model, nn.Module) or callable(model)):
        raise TypeError(
            f"model must be a torch.nn.Module or a factory returning one; got {type(model).__name__}"
        )
    plan = make_plan(arms_data, estimate_kind, estimate_kwargs, estimate, estimate_rows, site, augmentations)
    refs = reference_arms(references, plan, estimate)
    if plan.model_based and "baseline" not in penalty_arms:
        raise ValueError(
            "a model-based estimate is made with each seed's trained baseline: include 'baseline'"
        )
    if config.reestimate_every and not plan.model_based:
        raise ValueError("reestimate_every > 0 needs a model-based estimate (a layer site or pseudo-labels)")
    how = {
        name: arms_data.check_disjoint(name)
        for name in ("target_pool", "target_val")
        if name != "target_val" or arms_data.target_val is not None
    }
    if estimate is not None:
        how["estimate_rows"] = arms_data.check_disjoint("estimate_rows", plan.rows)
    if "augmentation" in refs:
        mix_augmentations(tuple(augmentations or DIGIT_AUGMENTATIONS))
    global_estimate = estimate
    if global_estimate is None and not plan.model_based:
        assert plan.kind is not None
        global_estimate = estimate_nuisance(plan.kind, site=site, **plan.kwargs)
    if global_estimate is not None:
        _check_controls(global_estimate, penalty_arms)
    experiment = _Experiment(
        data=arms_data,
        plan=plan,
        site=site,
        measure=measure,
        config=config,
        arms=penalty_arms,
        references=refs,
        grid=grid,
        selections=SELECTIONS if selection == "both" else (selection,),
        augmentations=tuple(augmentations or DIGIT_AUGMENTATIONS),
        estimate=global_estimate,
        metric=deploy_metric,
    )
    n_penalised = len(penalty_arms) - ("baseline" in penalty_arms)
    total = len(seed_list) * (("baseline" in penalty_arms) + n_penalised * len(grid) + len(refs))
    runs: list[ArmRun] = []
    estimates: dict[int, NuisanceEstimate] = {}
    dist = torch.distributed
    lead = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    with progress(quiet or not lead, total, "PMH arms") as advance:
        for seed in seed_list:
            seed_runs, estimates[seed] = experiment.seed(seed, initial_model(model, seed), advance)
            runs.extend(seed_runs)
    first = estimates[seed_list[0]]
    hashes = dict(arms_data.split_hashes())
    hashes["estimation_rows"] = tensor_hash(plan.rows)
    return ArmsResult(
        runs=tuple(runs),
        estimate=first,
        selection=selection,
        split_hashes=hashes,
        arms=(*penalty_arms, *refs),
        seeds=seed_list,
        strengths=grid,
        config=config,
        estimation=describe(plan, first, arms_data, how),
        estimates=estimates,
        metric=deploy_metric.name,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class _Experiment:
    """Everything fixed across seeds; :meth:`seed` trains and measures every arm of one seed."""

    data: ArmsData
    plan: Plan
    site: str
    measure: str
    config: TrainConfig
    arms: tuple[str, ...]
    references: tuple[str, ...]
    grid: tuple[float, ...]
    selections: tuple[str, ...]
    augmentations: tuple[Any, ...]
    estimate: NuisanceEstimate | None
    metric: DeployMetric

    def _measure(self, fit: FitResult, est: NuisanceEstimate, detailed: bool) -> dict[str, Any]:
        return _measure(fit, est, self.data, self.measure, self.metric, detailed)

    def _fit(
        self,
        init: nn.Module,
        seed: int,
        strength: float,
        *,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
        recipe: nn.Module | None = None,
        **kwargs: Any,
    ) -> tuple[PMHTrainer, FitResult]:
        config = dataclasses.replace(self.config, seed=seed, strength=strength)
        trainer = PMHTrainer(init, site=self.site, measure=self.measure, config=config)
        if recipe is not None:
            assert self.plan.kind is not None
            trainer.estimate(self.plan.kind, using=recipe, **self.plan.kwargs)
        return trainer, trainer.fit(self.data.source_train if train is None else train, quiet=True, **kwargs)

    def _run(self, arm: str, seed: int, selection: str, fit: FitResult, est: NuisanceEstimate) -> ArmRun:
        metrics = self._measure(fit, self._metric_estimate(fit, est), detailed=True)
        return _run(arm, seed, selection, fit, metrics, ())

    def _metric_estimate(self, fit: FitResult, est: NuisanceEstimate) -> NuisanceEstimate:
        """Σ the drift and sensitivity of ``fit`` are measured along: the seed's Σ at the input; at a layer
        site, Σ re-estimated with the run's own trained model, so that every arm is measured in its own
        representation (the seed's Σ, with a warning, if that estimate cannot be made)."""
        if self.site == INPUT:
            return est
        assert self.plan.kind is not None
        try:
            return estimate_nuisance(self.plan.kind, model=fit.model, site=self.site, **self.plan.kwargs)
        except ValueError as err:
            warnings.warn(
                f"drift of a {fit.mode!r} run measured along the seed's Σ: re-estimating with its model "
                f"failed ({err})",
                RuntimeWarning,
                stacklevel=2,
            )
            return est

    def seed(
        self, seed: int, init: nn.Module, advance: Callable[[str], None]
    ) -> tuple[list[ArmRun], NuisanceEstimate]:
        """All runs of one seed and the matched Σ they used."""
        est, runs, recipe = self.estimate, [], None
        if "baseline" in self.arms:  # always there for a model-based estimate (checked by run_arms)
            base_trainer, base = self._fit(init, seed, 0.0)
            advance(f"seed {seed}: baseline")
            if est is None:
                assert self.plan.kind is not None
                est = base_trainer.estimate(self.plan.kind, **self.plan.kwargs)
                _check_controls(est, self.arms)
            runs.append(self._run("baseline", seed, FIXED, base, est))
            recipe = base.model if self.plan.model_based and self.config.reestimate_every else None
        assert est is not None
        for arm in (a for a in self.arms if a != "baseline"):
            tried = []
            for strength in self.grid:
                _, result = self._fit(init, seed, strength, estimate=est, mode=arm, recipe=recipe)
                tried.append((result, self._measure(result, est, detailed=False)))
                advance(f"seed {seed}: {arm} λ={strength:g}")
            cands = tuple(
                Candidate(
                    r.strength,
                    m["source_val_accuracy"],
                    m["target_val_accuracy"],
                    m["deploy_accuracy"],
                    m["source_val_score"],
                    m["target_val_score"],
                    m["deploy_score"],
                )
                for r, m in tried
            )
            for sel in self.selections:
                key = f"{sel}_score"
                best = max(range(len(tried)), key=lambda i: (tried[i][1][key], -i))
                chosen = tried[best][0]
                metrics = self._measure(chosen, self._metric_estimate(chosen, est), detailed=True)
                runs.append(_run(arm, seed, sel, chosen, metrics, cands))
        for ref in self.references:
            runs.append(self._run(ref, seed, FIXED, self._reference(ref, init, seed), est))
            advance(f"seed {seed}: {ref}")
        return runs, est

    def _reference(self, ref: str, init: nn.Module, seed: int) -> FitResult:
        if ref == "augmentation":
            return self._fit(init, seed, 0.0, augment=mix_augmentations(self.augmentations))[1]
        if ref == "target_rows":
            labels = self.data.target_pool_labels
            assert labels is not None
            combined, _ = with_target_rows(self.data.source_train, (self.data.target_pool, labels))
            return self._fit(init, seed, 0.0, train=combined)[1]
        xs, ys = self.data.source_train
        return self._fit(init, seed, 0.0, train=(coral_map(xs, self.data.target_pool)(xs), ys))[1]
