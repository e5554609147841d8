"""Deploy stories mapped to nuisance estimators: what to run for the change you expect, with what data."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

from shiftlab.report import Report, Table


@dataclasses.dataclass(frozen=True)
class Route:
    """One deploy story, the estimator for it (see ``estimate_nuisance``) and the data it needs."""

    story: str
    estimator: str
    site: str
    needs: str
    note: str


ROUTES: tuple[Route, ...] = (
    Route(
        "new site or camera, labelled target rows",
        "domain",
        "input or a hidden layer",
        "source and target features with labels on both",
        "class-aligned mean shift plus the positive part of the covariance difference; the strongest Σ",
    ),
    Route(
        "new site, no target labels",
        "domain",
        "hidden layer",
        "source and target features, a trained model for confident pseudo-labels",
        "without a model the label-free moment fallback can pick up class directions and hurt",
    ),
    Route(
        "new site, cross-domain subspace",
        "subspace",
        "input or a hidden layer",
        "labelled source and target features",
        "all same-class cross-domain differences (mean shift and both within-class spreads)",
    ),
    Route(
        "sensor noise",
        "isotropic",
        "input",
        "a noise level sigma, or repeated measurements of the same items",
        "σ² I; as a penalty it is plain Jacobian (Tikhonov) regularisation",
    ),
    Route(
        "known augmentations (shifts, stroke width, rescaling)",
        "augmentation",
        "input or a hidden layer",
        "training inputs and augmentation callables aug(x, generator)",
        "compare against plain augmentation with the same transforms",
    ),
    Route(
        "sim-to-real per layer",
        "domain",
        "each hidden layer in turn",
        "simulated and real features at the layer (labels if available)",
        "check the eigengap per layer; penalise where the shift is low-rank",
    ),
    Route(
        "nuisance coordinates or token groups",
        "compositional",
        "input",
        "data and the names or indices of the nuisance coordinates",
        "covariance restricted to the named coordinates",
    ),
    Route(
        "temporal drift",
        "temporal",
        "input or a hidden layer",
        "sequences of observations (n_seq, T, d) or a list of (T_i, d)",
        "second moment of successive differences",
    ),
    Route(
        "style pairs (same content, different style)",
        "style",
        "input or an embedding layer",
        "paired content and styled examples",
        "second moment of the paired differences",
    ),
    Route(
        "adversarial directions",
        "adversarial",
        "input",
        "a model, inputs and labels; an L∞ or L2 budget",
        "PGD deltas through the model's head",
    ),
)


@dataclasses.dataclass(frozen=True)
class RouteTable(Report):
    """All deploy stories with their estimators (what ``shiftlab pmh route --list`` prints)."""

    kind: ClassVar[str] = "pmh_routes"

    routes: tuple[Route, ...] = ROUTES

    def headline(self) -> str:
        return f"{len(self.routes)} deploy stories and the nuisance estimator for each"

    def fields(self) -> dict[str, object]:
        return {}

    def tables(self) -> Sequence[Table]:
        rows = tuple((r.story, r.estimator, r.site, r.needs, r.note) for r in self.routes)
        return (Table("Deploy stories", ("story", "estimator", "site", "needs", "note"), rows),)


def route_table() -> RouteTable:
    """The deploy-story table.

    Examples
    --------
    >>> table = route_table()
    >>> sorted({r.estimator for r in table.routes})[:3]
    ['adversarial', 'augmentation', 'compositional']
    """
    return RouteTable()
