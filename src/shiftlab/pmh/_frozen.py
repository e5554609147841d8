"""Frozen features: the PMH arms through ``PMHMatcher`` and a linear head, with the same SHIP verdict.

For each seed the labelled target rows are split (stratified, disjoint) into an estimation pool (Σ), a
small target validation split (λ selection) and a deploy holdout (the verdict); a fixed share of the source
rows is held out for source validation. Every arm fits a multinomial logistic regression on the mapped
source features:

* ``baseline``: identity map (λ = 0);
* ``matched`` / ``isotropic`` / ``wrong``: (I + λ Σ_arm)^(-1/2) with Σ_arm from :func:`control_estimate`;
* reference arms: ``target_rows`` (source plus the labelled pool rows, when Σ used target labels) and
  ``coral`` (source features re-coloured to the target pool's second moments, label-free).

λ is chosen per arm and seed on the target validation split (never the holdout), by the deploy metric
(accuracy unless ``metric`` names another :class:`DeployMetric`, scored on the head's logits); the metric
also decides the verdict, and accuracy is recorded beside it. Features are used as given, so put them on a
common scale first (the head's L2 penalty and Σ both depend on it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from shiftlab.pmh._controls import control_estimate
from shiftlab.pmh._deploy_metric import METRICS, DeployMetric, resolve_metric
from shiftlab.pmh._estimators import estimate_nuisance
from shiftlab.pmh._matcher import PMHMatcher
from shiftlab.pmh._verdict import ShipVerdict, VerdictConfig, ship_verdict
from shiftlab.report import Report, Table

PENALTY_ARMS: tuple[str, ...] = ("matched", "isotropic", "wrong")


@dataclasses.dataclass(frozen=True)
class FrozenConfig:
    """Splits and grids of the frozen-feature evaluation.

    Attributes
    ----------
    pool_fraction, val_fraction
        Shares of the labelled target rows used for Σ and for λ selection; the rest is the deploy holdout.
    source_val_fraction
        Share of source rows held out for source-validation accuracy.
    strengths
        λ grid for the penalty arms.
    rank
        Rank of Σ (``None``: the estimator's automatic choice).
    seeds
        One split and one fit per seed.
    use_target_labels
        Estimate Σ class-aligned with the pool's labels (``False``: label-free ``domain`` moments).
    c
        Inverse L2 strength of the logistic head (scikit-learn's ``C``).
    """

    pool_fraction: float = 0.4
    val_fraction: float = 0.15
    source_val_fraction: float = 0.2
    strengths: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    rank: int | None = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    use_target_labels: bool = True
    c: float = 1.0

    def __post_init__(self) -> None:
        if not (
            self.pool_fraction > 0 and self.val_fraction > 0 and self.pool_fraction + self.val_fraction < 0.9
        ):
            raise ValueError(
                "pool_fraction and val_fraction must be > 0 and leave at least 10% for the holdout"
            )
        if not 0 < self.source_val_fraction < 0.5:
            raise ValueError("source_val_fraction must lie in (0, 0.5)")
        if not self.strengths or any(not (math.isfinite(s) and s > 0) for s in self.strengths):
            raise ValueError("strengths must be a non-empty tuple of finite numbers > 0")
        if not self.seeds:
            raise ValueError("seeds must not be empty")


@dataclasses.dataclass(frozen=True)
class FrozenReport(Report):
    """Per-arm deploy accuracy over seeds, chosen strengths, split hashes and the verdict."""

    kind: ClassVar[str] = "pmh_frozen"

    verdict: ShipVerdict
    deploy_accuracy: Mapping[str, tuple[float, ...]]
    source_val_accuracy: Mapping[str, tuple[float, ...]]
    chosen_strength: Mapping[str, tuple[float, ...]]
    split_sizes: Mapping[str, int]
    split_hashes: tuple[Mapping[str, str], ...]
    estimator: str
    rank: int
    metric: str = "accuracy"
    deploy_metric: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)

    def headline(self) -> str:
        return self.verdict.headline()

    def fields(self) -> Mapping[str, Any]:
        return {
            "verdict": self.verdict.verdict,
            "deploy metric": self.metric,
            "estimator": self.estimator,
            "rank": self.rank,
            **self.split_sizes,
        }

    def tables(self) -> Sequence[Table]:
        extra = bool(self.deploy_metric)
        rows = tuple(
            (
                arm,
                float(np.mean(acc)),
                float(np.std(acc)),
                *((float(np.mean(self.deploy_metric[arm])),) if extra else ()),
                float(np.mean(self.source_val_accuracy[arm])),
                ", ".join(f"{s:g}" for s in self.chosen_strength.get(arm, ())) or "-",
            )
            for arm, acc in self.deploy_accuracy.items()
        )
        columns = (
            "arm",
            "deploy acc",
            "sd",
            *((f"deploy {self.metric}",) if extra else ()),
            "source val",
            "λ",
        )
        return (Table("Arms (frozen features, logistic head)", columns, rows), *self.verdict.tables())


def _hash(indices: np.ndarray) -> str:
    return hashlib.sha256(np.sort(indices).astype(np.int64).tobytes()).hexdigest()[:16]


def _stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Disjoint index sets with the given fractions per class (the remainder is the last set)."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.cumsum([round(f * idx.size) for f in fractions])
        for p, chunk in enumerate(np.split(idx, cuts)):
            parts[p].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _fit(train_x: np.ndarray, train_y: np.ndarray, c: float) -> Any:
    """Multinomial logistic regression on the features as given (no re-scaling: a per-coordinate scaler
    would partly undo the (I + λΣ)^(-1/2) map and entirely undo the isotropic one)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000).fit(train_x, train_y)


def _metric_scores(head: Any, x: np.ndarray, y: np.ndarray, metric: DeployMetric) -> np.ndarray:
    """Per-example deploy scores of the head on (x, y): its logits (the decision function; for two
    classes the log-odds z gives logits (0, z)) and the labels as column indices of ``head.classes_``."""
    z = head.decision_function(x)
    if z.ndim == 1:
        z = np.stack([np.zeros_like(z), z], axis=1)
    columns = np.searchsorted(head.classes_, y)
    logits = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float64))
    return metric.score(logits, torch.from_numpy(columns.astype(np.int64))).numpy()


def _coral(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Source re-coloured to the target's second moments: (x - μ_s) C_s^{-1/2} C_t^{1/2} + μ_t."""

    def sqrt_and_inv(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vals, vecs = np.linalg.eigh(cov + np.eye(cov.shape[0]))  # +I: the CORAL paper's regulariser
        return (vecs * np.sqrt(vals)) @ vecs.T, (vecs / np.sqrt(vals)) @ vecs.T

    _, inv_s = sqrt_and_inv(np.cov(source, rowvar=False))
    sqrt_t, _ = sqrt_and_inv(np.cov(target, rowvar=False))
    return (source - source.mean(0)) @ inv_s @ sqrt_t + target.mean(0)


def evaluate_frozen(
    source: Any,
    source_labels: Any,
    target: Any,
    target_labels: Any,
    *,
    kind: str = "domain",
    config: FrozenConfig = FrozenConfig(),
    verdict_config: VerdictConfig | None = None,
    metric: str | DeployMetric = "accuracy",
) -> FrozenReport:
    """Run the PMH arms on frozen features and decide SHIP / DO NOT SHIP / INCONCLUSIVE.

    Parameters
    ----------
    source, source_labels
        (n_s, d) features and integer labels of the training site.
    target, target_labels
        (n_t, d) features and labels of the deploy site (labels score the holdout; whether Σ may use the
        pool's labels is ``config.use_target_labels``).
    kind
        ``"domain"`` or ``"subspace"`` (the latter always uses labels).
    metric
        Deploy metric for λ selection and the verdict (a name in ``METRICS`` or a :class:`DeployMetric`);
        any metric but accuracy needs every deploy class among the source labels (it scores the head's
        probabilities of the true class).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ys, yt = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    >>> xs = rng.normal(size=(400, 4)) + ys[:, None]
    >>> xt = rng.normal(size=(400, 4)) + yt[:, None] + np.outer(rng.normal(size=400) * 3, [0, 0, 0, 1])
    >>> report = evaluate_frozen(xs, ys, xt, yt, config=FrozenConfig(rank=1))
    >>> sorted(report.deploy_accuracy)
    ['baseline', 'coral', 'isotropic', 'matched', 'target_rows', 'wrong']
    """
    xs, ys = np.asarray(source, dtype=np.float64), np.asarray(source_labels)
    xt, yt = np.asarray(target, dtype=np.float64), np.asarray(target_labels)
    for name, x, y in (("source", xs, ys), ("target", xt, yt)):
        if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{name} must be (n, d) with (n,) labels; got {x.shape} and {y.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} features contain NaN or inf")
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"{name} labels must be integers; got {y.dtype}")
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"source has {xs.shape[1]} features, target {xt.shape[1]}")
    if kind not in ("domain", "subspace"):
        raise ValueError(f"kind must be 'domain' or 'subspace' for frozen features; got {kind!r}")
    if kind == "subspace" and not config.use_target_labels:
        raise ValueError("the subspace estimator needs target labels; use kind='domain' for label-free Σ")
    shared = np.intersect1d(np.unique(ys), np.unique(yt))
    if shared.size < 2:
        raise ValueError(f"source and target share {shared.size} class(es); the evaluation needs at least 2")
    deploy_metric = resolve_metric(metric)
    by_accuracy = deploy_metric is METRICS["accuracy"]
    missing = np.setdiff1d(np.unique(yt), np.unique(ys))
    if not by_accuracy and missing.size:
        raise ValueError(
            f"the deploy metric {deploy_metric.name!r} scores the head's probability of the true class, so "
            f"every deploy class must occur in the source labels; missing: {missing.tolist()}"
        )

    arms = ("baseline", *PENALTY_ARMS, "coral") + (("target_rows",) if config.use_target_labels else ())
    correct: dict[str, list[np.ndarray]] = {a: [] for a in arms}
    scored: dict[str, list[np.ndarray]] = {a: [] for a in arms}
    source_acc: dict[str, list[float]] = {a: [] for a in arms}
    chosen: dict[str, list[float]] = {a: [] for a in PENALTY_ARMS}
    hashes: list[dict[str, str]] = []
    sizes: dict[str, int] = {}
    splits = {
        seed: _stratified_split(yt, (config.pool_fraction, config.val_fraction), seed)
        for seed in config.seeds
    }
    holdout_size = min(parts[2].size for parts in splits.values())  # equal n across seeds for the paired grid
    rank = 0
    for seed in config.seeds:
        pool, val, hold = splits[seed]
        hold = hold[:holdout_size]
        if np.intersect1d(pool, hold).size or np.intersect1d(val, hold).size:
            raise RuntimeError("internal error: the estimation rows overlap the deploy holdout")
        s_train, s_val = _stratified_split(ys, (1 - config.source_val_fraction,), seed + 10_000)[:2]
        yt_hold, ys_sval = yt[hold], ys[s_val]
        hashes.append({"target_pool": _hash(pool), "target_val": _hash(val), "target_holdout": _hash(hold)})
        sizes = {
            "n_source_train": s_train.size,
            "n_source_val": s_val.size,
            "n_target_pool": pool.size,
            "n_target_val": val.size,
            "n_target_holdout": hold.size,
        }
        kwargs: dict[str, Any] = {
            "source": torch.from_numpy(xs[s_train]),
            "target": torch.from_numpy(xt[pool]),
            "rank": config.rank,
        }
        if config.use_target_labels:
            kwargs |= {
                "source_labels": torch.from_numpy(ys[s_train]),
                "target_labels": torch.from_numpy(yt[pool]),
            }
        estimate = estimate_nuisance(kind, **kwargs)
        rank = estimate.rank

        def score(
            arm: str,
            train_x: np.ndarray,
            train_y: np.ndarray,
            mapped: tuple[np.ndarray, np.ndarray],
            truth: tuple[np.ndarray, np.ndarray] = (yt_hold, ys_sval),
        ) -> None:
            head = _fit(train_x, train_y, config.c)
            correct[arm].append((head.predict(mapped[0]) == truth[0]).astype(np.float64))
            source_acc[arm].append(float((head.predict(mapped[1]) == truth[1]).mean()))
            if not by_accuracy:
                scored[arm].append(_metric_scores(head, mapped[0], truth[0], deploy_metric))

        score("baseline", xs[s_train], ys[s_train], (xt[hold], xs[s_val]))
        for arm in PENALTY_ARMS:
            sigma = control_estimate(estimate, arm, seed=seed)
            best: tuple[float, float] | None = None
            for lam in config.strengths:
                matcher = PMHMatcher(nuisance=sigma, strength=lam).fit(xs[s_train])
                head = _fit(matcher.transform(xs[s_train]), ys[s_train], config.c)
                mapped_val = matcher.transform(xt[val])
                value = float(
                    (head.predict(mapped_val) == yt[val]).mean()
                    if by_accuracy
                    else _metric_scores(head, mapped_val, yt[val], deploy_metric).mean()
                )
                if best is None or value > best[0]:
                    best = (value, lam)
            assert best is not None
            chosen[arm].append(best[1])
            matcher = PMHMatcher(nuisance=sigma, strength=best[1]).fit(xs[s_train])
            score(
                arm,
                matcher.transform(xs[s_train]),
                ys[s_train],
                (matcher.transform(xt[hold]), matcher.transform(xs[s_val])),
            )
        score("coral", _coral(xs[s_train], xt[pool]), ys[s_train], (xt[hold], xs[s_val]))
        if config.use_target_labels:
            rows = np.concatenate(
                [xs[s_train], np.repeat(xt[pool], max(1, s_train.size // pool.size), axis=0)]
            )
            labels = np.concatenate([ys[s_train], np.repeat(yt[pool], max(1, s_train.size // pool.size))])
            score("target_rows", rows, labels, (xt[hold], xs[s_val]))

    deploy = {a: torch.from_numpy(np.stack(correct[a] if by_accuracy else scored[a])) for a in arms}
    source_val = {a: torch.tensor(source_acc[a], dtype=torch.float64) for a in arms}
    verdict = ship_verdict(deploy, source_val, verdict_config or VerdictConfig(), metric=deploy_metric.name)
    return FrozenReport(
        verdict=verdict,
        deploy_accuracy={a: tuple(float(c.mean()) for c in correct[a]) for a in arms},
        source_val_accuracy={a: tuple(source_acc[a]) for a in arms},
        chosen_strength={a: tuple(v) for a, v in chosen.items()},
        split_sizes=sizes,
        split_hashes=tuple(hashes),
        estimator=kind + ("" if config.use_target_labels else " (label-free)"),
        rank=rank,
        metric=deploy_metric.name,
        deploy_metric={} if by_accuracy else {a: tuple(float(v.mean()) for v in scored[a]) for a in arms},
    )
