r"""``check_applicability``: can a label-preserving nuisance penalty address this shift? (go/marginal/no-go)

Perturbation matching assumes deployment moves inputs by a **label-preserving** displacement. This check
inspects the data (not flags) for what breaks that assumption: label sets that differ, classes too small
to estimate, and class-conditional structure that disagrees across sites (a label-changing shift).

The label-change test compares class means after removing what a nuisance may legitimately change
globally. In each domain, rows are centred on the average of the class means over the shared classes and
scaled by the RMS norm of the centred class means,
:math:`z = (x - \bar\mu) / (\frac1K\sum_k\lVert\mu_k - \bar\mu\rVert^2)^{1/2}`
(invariant to a global offset and scale and to class proportions). The optimal one-to-one matching
:math:`\pi` of target to source class means of z (Hungarian algorithm on
:math:`\lVert\bar z_{t,c} - \bar z_{s,c'}\rVert`) is the identity under a label-preserving shift;
under relabelling it is not. A matching :math:`\pi \ne \mathrm{id}` is declared a label change when the
target rows of the re-matched classes are classified by the nearest source class mean as
:math:`\pi(c)` significantly more often than as :math:`c` (one-sided sign test) and relabelling raises
that nearest-class-mean accuracy by at least ``min_relabel_gain``. Matching, rather than each class's
nearest mean, is what makes this robust: on MNIST → UCI digits (8×8) the UCI "9" mean lies nearer the
MNIST "3" mean than the MNIST "9" mean, yet the matching is the identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from shiftlab.pmh._estimators_common import (
    check_int,
    check_labels,
    check_samples,
    check_site,
    class_counts,
    frozen_copy,
    site_features,
)
from shiftlab.report import Report, Table

Verdict = Literal["go", "marginal", "no-go"]
_LEVELS: dict[str, int] = {"ok": 0, "marginal": 1, "no-go": 2}


@dataclasses.dataclass(frozen=True)
class ApplicabilityConfig:
    """Thresholds of :func:`check_applicability` (each with where it comes from).

    Attributes
    ----------
    max_unseen_fraction
        Fraction of target rows in classes the source never had above which the shift is not same-label
        (no-go); any such rows below it make the verdict marginal. 5%: a deploy set where one row in 20
        cannot be classified correctly at all is outside the method's scope.
    alpha
        Level of the one-sided sign test declaring a class re-matching real (1%, strict because a no-go
        stops the workflow).
    min_relabel_gain
        Minimum rise of nearest-class-mean accuracy on the target (as a fraction of its rows) from
        relabelling, so that a significant but negligible re-matching of two near-identical classes is
        only marginal.
    chance_margin
        Nearest-class-mean accuracy within this of chance (1/K) means class structure is not
        recognisable across sites at this site, so a label change cannot be ruled out (marginal).
    """

    max_unseen_fraction: float = 0.05
    alpha: float = 0.01
    min_relabel_gain: float = 0.02
    chance_margin: float = 0.05

    def __post_init__(self) -> None:
        for name in ("max_unseen_fraction", "alpha", "min_relabel_gain", "chance_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number in [0, 1); got {value!r}")


@dataclasses.dataclass(frozen=True)
class ApplicabilityReport(Report):
    """Verdict of :func:`check_applicability` with the reasons and the numbers behind them."""

    kind: ClassVar[str] = "pmh-applicability"

    verdict: Verdict
    reasons: tuple[str, ...]
    site: str
    n_source: int
    n_target: int
    min_per_class: int
    source_counts: dict[int, int]
    target_counts: dict[int, int] | None
    shared_classes: tuple[int, ...]
    ncm_accuracy: float | None
    ncm_accuracy_matched: float | None
    chance: float | None
    matching: tuple[tuple[int, int], ...]
    sign_test_p: float | None

    def headline(self) -> str:
        """Verdict and the most severe reason."""
        return f"{self.verdict} ({self.reasons[0]})"

    def tables(self) -> Sequence[Table]:
        """The reasons, then rows per class and domain with the source class each target class matched."""
        matched = dict(self.matching)
        classes = sorted(set(self.source_counts) | set(self.target_counts or {}))
        rows = tuple(
            (
                c,
                self.source_counts.get(c, 0),
                "—" if self.target_counts is None else self.target_counts.get(c, 0),
                matched.get(c, "—"),
            )
            for c in classes
        )
        reasons = Table("Reasons", ("finding",), tuple((r,) for r in self.reasons))
        return (
            reasons,
            Table("Classes", ("class", "source rows", "target rows", "matched source class"), rows),
        )


def _standardisation(
    feats: torch.Tensor, labels: torch.Tensor, classes: list[int]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Centre (mean of class means) and scale (RMS norm of centred class means); None if means coincide."""
    means = torch.stack([feats[labels == c].mean(0) for c in classes])
    centre = means.mean(0)
    scale = (means - centre).pow(2).sum(1).mean().sqrt()
    return None if float(scale) == 0.0 else (centre, scale)


def _label_change(
    fs: torch.Tensor,
    ys: torch.Tensor,
    ft: torch.Tensor,
    yt: torch.Tensor,
    shared: list[int],
    config: ApplicabilityConfig,
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    from scipy.optimize import linear_sum_assignment
    from scipy.stats import binom

    shared_t = torch.tensor(shared)
    in_shared = torch.isin(yt, shared_t)
    ft, yt = ft[in_shared], yt[in_shared]
    norm_s, norm_t = _standardisation(fs, ys, shared), _standardisation(ft, yt, shared)
    if norm_s is None or norm_t is None:
        return [
            ("marginal", "all class means coincide in one domain: class structure cannot be compared")
        ], {}
    zs = (fs - norm_s[0]) / norm_s[1]
    zt = (ft - norm_t[0]) / norm_t[1]
    ms = torch.stack([zs[ys == c].mean(0) for c in shared])
    mt = torch.stack([zt[yt == c].mean(0) for c in shared])
    _, cols = linear_sum_assignment(torch.cdist(mt, ms).numpy())
    matched_to = shared_t[torch.as_tensor(cols)]
    position = {c: i for i, c in enumerate(shared)}
    pred = shared_t[torch.cdist(zt, ms).argmin(1)]
    own = yt
    assigned = matched_to[torch.tensor([position[int(c)] for c in yt])]
    chance = 1.0 / len(shared)
    acc = float((pred == own).double().mean())
    acc_matched = float((pred == assigned).double().mean())
    moved = [(c, int(matched_to[i])) for i, c in enumerate(shared) if int(matched_to[i]) != c]
    stats: dict[str, Any] = {
        "ncm_accuracy": acc,
        "ncm_accuracy_matched": acc_matched,
        "chance": chance,
        "matching": tuple((c, int(matched_to[i])) for i, c in enumerate(shared)),
        "sign_test_p": None,
    }
    findings: list[tuple[str, str]] = []
    if moved:
        rows = assigned != own
        a = int((pred[rows] == assigned[rows]).sum())
        b = int((pred[rows] == own[rows]).sum())
        p = float(binom.sf(a - 1, a + b, 0.5)) if a + b > 0 else 1.0
        stats["sign_test_p"] = p
        gain = acc_matched - acc
        pairs = ", ".join(f"{c}→{d}" for c, d in moved)
        detail = (
            f"target classes match other source classes ({pairs}): of their {int(rows.sum())} target rows, "
            f"{a} sit nearest the matched class mean and {b} their own (sign test p = {p:.2g}); relabelling "
            f"would change nearest-class-mean accuracy from {acc:.3f} to {acc_matched:.3f}"
        )
        if p < config.alpha and gain >= config.min_relabel_gain:
            findings.append(("no-go", f"likely label-changing shift: {detail}"))
        else:
            findings.append(("marginal", f"possible label change, not significant: {detail}"))
    else:
        findings.append(
            (
                "ok",
                f"class means correspond across sites: the optimal matching of target to source class means "
                f"is the identity (nearest-class-mean accuracy on target {acc:.3f}, chance {chance:.3f})",
            )
        )
    if acc <= chance + config.chance_margin:
        findings.append(
            (
                "marginal",
                f"class structure is barely recognisable across sites at this site: nearest-class-mean "
                f"accuracy {acc:.3f} vs chance {chance:.3f}; a label change cannot be ruled out",
            )
        )
    return findings, stats


def check_applicability(
    source: Any,
    source_labels: Any,
    target: Any,
    target_labels: Any = None,
    *,
    model: nn.Module | None = None,
    site: str = "input",
    min_per_class: int = 10,
    config: ApplicabilityConfig | None = None,
) -> ApplicabilityReport:
    r"""Inspect source and target data: can a label-preserving nuisance model describe this shift?

    Findings, each ``ok``, ``marginal`` or ``no-go``; the verdict is the most severe (``ok`` → ``go``):

    - **label sets**: fewer than 2 source classes, no class shared with the labelled target, or more than
      ``max_unseen_fraction`` of target rows in classes the source lacks → no-go; fewer unseen rows, or
      source classes absent from the target → marginal;
    - **samples per class**: a class with fewer than ``min_per_class`` rows in either domain (without
      target labels: fewer than ``min_per_class × K`` target rows) → marginal;
    - **label-changing shift** (needs target labels; see the module notes for the test): a significant
      re-matching of class means across sites → no-go; a non-significant one, or nearest-class-mean
      accuracy near chance → marginal;
    - **no target labels**: a label change cannot be detected from the data → marginal.

    Malformed input (empty target, NaN/Inf, mismatched shapes, non-integer labels, unknown layer) raises
    before any work; data that is well-formed but unsuitable gets a no-go with the reason.

    Parameters
    ----------
    source, source_labels
        Source samples ``(n_s, *shape)`` and integer labels.
    target, target_labels
        Target samples ``(n_t, *shape)`` and optional integer labels (a few per class suffice).
    model, site
        Compare features at a layer of ``model`` (frozen deep copy) instead of the raw input.
    min_per_class
        Rows per class and domain below which estimates are unreliable (>= 2). Default 10: a class
        mean from n rows has a standard error of σ/√n, about a third of the within-class spread at 10.
    config
        Statistical thresholds (:class:`ApplicabilityConfig`).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> means = 4 * torch.eye(3, 6)
    >>> ys = torch.arange(300) % 3
    >>> xs = means[ys] + torch.randn(300, 6, generator=g)
    >>> xt = means[ys] + torch.randn(300, 6, generator=g) + 1.0
    >>> check_applicability(xs, ys, xt, ys).verdict
    'go'
    >>> swapped = torch.tensor([1, 0, 2])[ys]
    >>> check_applicability(xs, ys, xt, swapped).verdict
    'no-go'
    """
    cfg = ApplicabilityConfig() if config is None else config
    if not isinstance(cfg, ApplicabilityConfig):
        raise TypeError(f"config must be an ApplicabilityConfig; got {type(cfg).__name__}")
    min_per_class = check_int(min_per_class, "min_per_class", low=2)
    xs = check_samples(source, "source")
    xt = check_samples(target, "target")
    if xs.shape[1:] != xt.shape[1:]:
        raise ValueError(
            f"source and target samples differ in shape: {tuple(xs.shape[1:])} vs {tuple(xt.shape[1:])}"
        )
    ys = check_labels(source_labels, xs.shape[0], "source_labels").cpu()
    yt = None if target_labels is None else check_labels(target_labels, xt.shape[0], "target_labels").cpu()
    check_site(site, model)
    copy = None if model is None else frozen_copy(model)
    source_counts = class_counts(ys)
    target_counts = None if yt is None else class_counts(yt)
    findings: list[tuple[str, str]] = []
    stats: dict[str, Any] = {}
    shared = (
        sorted(source_counts) if target_counts is None else sorted(set(source_counts) & set(target_counts))
    )
    if len(source_counts) < 2:
        findings.append(
            ("no-go", f"the source has a single class ({next(iter(source_counts))}): nothing to align")
        )
    small_source = sorted(c for c, n in source_counts.items() if n < min_per_class)
    if small_source:
        findings.append(("marginal", _too_small("source", source_counts, small_source, min_per_class)))
    if target_counts is None:
        findings.append(
            (
                "marginal",
                "no target labels: a label-changing shift cannot be detected from unlabelled data; "
                f"label about {min_per_class} target rows per class to check",
            )
        )
        needed = min_per_class * len(source_counts)
        if xt.shape[0] < needed:
            findings.append(
                ("marginal", f"{xt.shape[0]} target rows for {len(source_counts)} classes (< {needed})")
            )
    else:
        findings.extend(_label_sets(source_counts, target_counts, shared, xt.shape[0], cfg))
        small_target = sorted(c for c in shared if target_counts[c] < min_per_class)
        if small_target:
            findings.append(("marginal", _too_small("target", target_counts, small_target, min_per_class)))
        if len(shared) >= 2 and len(source_counts) >= 2:
            assert yt is not None
            fs, _ = site_features(xs, copy, site)
            ft, _ = site_features(xt, copy, site)
            more, stats = _label_change(fs.double().cpu(), ys, ft.double().cpu(), yt, shared, cfg)
            findings.extend(more)
    if not any(level != "ok" for level, _ in findings):
        findings.append(
            ("ok", f"{len(shared)} shared classes with at least {min_per_class} rows each per domain")
        )
    findings.sort(key=lambda f: -_LEVELS[f[0]])
    worst = findings[0][0]
    verdict: Verdict = "go" if worst == "ok" else "marginal" if worst == "marginal" else "no-go"
    return ApplicabilityReport(
        verdict=verdict,
        reasons=tuple(f"{level}: {text}" for level, text in findings),
        site=site,
        n_source=xs.shape[0],
        n_target=xt.shape[0],
        min_per_class=min_per_class,
        source_counts=source_counts,
        target_counts=target_counts,
        shared_classes=tuple(shared),
        ncm_accuracy=stats.get("ncm_accuracy"),
        ncm_accuracy_matched=stats.get("ncm_accuracy_matched"),
        chance=stats.get("chance"),
        matching=stats.get("matching", ()),
        sign_test_p=stats.get("sign_test_p"),
    )


def _too_small(domain: str, counts: dict[int, int], classes: list[int], min_per_class: int) -> str:
    listed = ", ".join(f"{c}: {counts[c]}" for c in classes)
    return f"{domain} classes with fewer than {min_per_class} rows (class: rows): {listed}"


def _label_sets(
    source_counts: dict[int, int],
    target_counts: dict[int, int],
    shared: list[int],
    n_target: int,
    cfg: ApplicabilityConfig,
) -> list[tuple[str, str]]:
    findings: list[tuple[str, str]] = []
    if not shared:
        return [
            (
                "no-go",
                f"no class is shared: source classes {sorted(source_counts)}, "
                f"target classes {sorted(target_counts)}",
            )
        ]
    unseen = sorted(set(target_counts) - set(source_counts))
    if unseen:
        n_unseen = sum(target_counts[c] for c in unseen)
        fraction = n_unseen / n_target
        level = "no-go" if fraction > cfg.max_unseen_fraction else "marginal"
        findings.append(
            (
                level,
                f"{n_unseen} target rows ({fraction:.1%}) are in classes {unseen} the source never had "
                f"(limit {cfg.max_unseen_fraction:.0%}): not a same-label shift",
            )
        )
    missing = sorted(set(source_counts) - set(target_counts))
    if missing:
        findings.append(
            (
                "marginal",
                f"source classes {missing} have no target rows: the shift of those classes is not observed",
            )
        )
    return findings
