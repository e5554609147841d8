"""PHTrainReport: what the PH training pipeline found, as tables, figures and JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from shiftlab.report import Report, Table, jsonable
from shiftlab.topology._analysis import PairScore
from shiftlab.topology._attack import FGSMResult
from shiftlab.topology._geometry import ClassGeometry
from shiftlab.topology._layers import LayerStep
from shiftlab.topology._lr import LRCandidate
from shiftlab.topology._monitor import MonitorStep

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["EpochRecord", "PHTrainReport"]


class _PassLike(Protocol):
    @property
    def loss(self) -> float: ...
    @property
    def accuracy(self) -> float: ...


@dataclass(frozen=True)
class EpochRecord:
    """One training epoch: losses and accuracies, the monitor's gap beside its noise floor, layer state."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    h0_train: float
    h0_val: float
    gap: float
    noise_floor: float
    p_value: float
    alert: bool
    consecutive: int
    stop: bool
    layer_state: str
    layer_mean_death: float | None
    layer_min_rank: float | None
    layer_max_inactive: float | None = None

    @classmethod
    def from_steps(
        cls, epoch: int, train: _PassLike, val: _PassLike, step: MonitorStep, layer: LayerStep
    ) -> EpochRecord:
        """Assemble the record of one epoch (``train`` is the evaluation on the train probe)."""
        return cls(
            epoch=epoch,
            train_loss=train.loss,
            train_accuracy=train.accuracy,
            val_loss=val.loss,
            val_accuracy=val.accuracy,
            h0_train=step.h0_train,
            h0_val=step.h0_val,
            gap=step.gap,
            noise_floor=step.noise_floor,
            p_value=step.p_value,
            alert=step.alert,
            consecutive=step.consecutive,
            stop=step.stop,
            layer_state=layer.state.value,
            layer_mean_death=layer.mean_death,
            layer_min_rank=layer.min_rank,
            layer_max_inactive=layer.max_inactive,
        )


@dataclass(frozen=True, eq=False)
class PHTrainReport(Report):
    """Result of :meth:`~shiftlab.topology.PHTrainer.run` (phases 1-4)."""

    kind: ClassVar[str] = "ph-train"

    dataset: str
    model: str
    class_names: tuple[str, ...]
    n_train: int
    n_val: int
    n_test: int
    config: Mapping[str, Any]
    difficulty_h0: float
    difficulty_val_accuracy: float
    difficulty_reference: tuple[Mapping[str, Any], ...]
    lr_search: tuple[LRCandidate, ...]
    lr_criterion: str
    lr_chosen: float
    lr_by_val_accuracy: float | None
    lr_by_val_loss: float | None
    lr_by_h0_cv: float | None
    epochs: tuple[EpochRecord, ...]
    stop_epoch: int | None
    best_epoch: int
    test_accuracy: float
    test_loss: float
    geometry: ClassGeometry
    confusion: torch.Tensor
    confusion_score: PairScore
    fgsm: FGSMResult
    fgsm_score: PairScore

    def headline(self) -> str:
        ran = len(self.epochs)
        how = (
            f"stopped by the H0 monitor after epoch {self.stop_epoch + 1}"
            if self.stop_epoch is not None
            else f"ran all {ran} epochs"
        )
        return (
            f"{self.dataset} / {self.model}: test accuracy {self.test_accuracy:.3f} "
            f"(best validation epoch {self.best_epoch + 1}, {how}, lr {self.lr_chosen:g})"
        )

    def fields(self) -> Mapping[str, Any]:
        return {
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "difficulty_h0 (1 epoch)": self.difficulty_h0,
            "difficulty_val_accuracy (1 epoch)": self.difficulty_val_accuracy,
            "lr_chosen": self.lr_chosen,
            "lr_criterion": self.lr_criterion,
            "lr_by_val_accuracy": self.lr_by_val_accuracy,
            "lr_by_val_loss": self.lr_by_val_loss,
            "lr_by_h0_cv": self.lr_by_h0_cv,
            "confusion_spearman (distance vs rate)": self.confusion_score.spearman,
            "confusion_mantel_p": self.confusion_score.mantel_p,
            f"confusion_precision@{self.confusion_score.k}": self.confusion_score.precision_at_k,
            "fgsm_epsilon": self.fgsm.epsilon,
            "fgsm_accuracy (clean -> attacked)": f"{self.fgsm.clean_accuracy:.3f} -> "
            f"{self.fgsm.adversarial_accuracy:.3f}",
            "fgsm_spearman (distance vs vulnerability)": self.fgsm_score.spearman,
            "fgsm_mantel_p": self.fgsm_score.mantel_p,
            "n_train / n_val / n_test": f"{self.n_train} / {self.n_val} / {self.n_test}",
        }

    def tables(self) -> Sequence[Table]:
        names = self.class_names
        out = [
            Table(
                "Difficulty reference (validation H0 after one epoch, same protocol)",
                ("dataset", "model", "h0 mean", "h0 sd", "val acc", "seeds"),
                tuple(
                    (r["dataset"], r["model"], r["h0_mean"], r["h0_sd"], r["val_accuracy_mean"], r["seeds"])
                    for r in self.difficulty_reference
                ),
            )
        ]
        if self.lr_search:
            out.append(
                Table(
                    "Learning-rate search (validation)",
                    ("lr", "H0 trajectory", "H0 CV", "val accuracy", "val loss"),
                    tuple(
                        (
                            r.lr,
                            " ".join(f"{h:.3f}" for h in r.h0_trajectory)
                            + (" diverged" if r.diverged else ""),
                            "undefined" if r.h0_cv is None else r.h0_cv,
                            r.val_accuracy,
                            r.val_loss,
                        )
                        for r in self.lr_search
                    ),
                )
            )
        out.append(
            Table(
                "Epochs (H0 gap beside its calibrated noise floor; train = fixed train probe)",
                (
                    "epoch",
                    "train acc",
                    "val acc",
                    "val loss",
                    "H0 train / val",
                    "gap (floor)",
                    "p",
                    "alert",
                    "layers",
                ),
                tuple(
                    (
                        r.epoch + 1,
                        r.train_accuracy,
                        r.val_accuracy,
                        r.val_loss,
                        f"{r.h0_train:.3f} / {r.h0_val:.3f}",
                        f"{r.gap:+.3f} ({r.noise_floor:.3f})",
                        r.p_value,
                        "ALERT" if r.alert else "",
                        r.layer_state,
                    )
                    for r in self.epochs
                ),
            )
        )
        vul = self.fgsm.pair_vulnerability
        conf = self.confusion_score
        rows = []
        for rank, ((a, b), dist, rate) in enumerate(zip(conf.pairs, conf.distance, conf.rate, strict=True)):
            if rank >= max(conf.k, 10):
                break
            rows.append((rank + 1, f"{names[a]} / {names[b]}", dist, rate, float(vul[a, b])))
        out.append(
            Table(
                "Closest class pairs (predicted confusions) vs validation confusion and FGSM flips",
                ("rank", "pair", "cosine distance", "confusion rate", "FGSM pair vulnerability"),
                tuple(rows),
            )
        )
        return out

    def figures(self) -> Mapping[str, Figure]:
        from matplotlib.figure import Figure
        from scipy.cluster.hierarchy import dendrogram

        epochs = [r.epoch + 1 for r in self.epochs]
        curves = Figure(figsize=(9, 3.6))
        ax1, ax2 = curves.subplots(1, 2)
        ax1.plot(epochs, [r.h0_train for r in self.epochs], "o-", label="H0 train probe")
        ax1.plot(epochs, [r.h0_val for r in self.epochs], "s-", label="H0 validation")
        ax1.set(xlabel="epoch", ylabel="H0 total persistence", title="Class-geometry H0")
        ax1.legend()
        floors = [r.noise_floor for r in self.epochs]
        ax2.fill_between(epochs, [-f for f in floors], floors, alpha=0.25, label="noise floor (split null)")
        ax2.plot(epochs, [r.gap for r in self.epochs], "o-", color="C3", label="gap train - val")
        alerts = [r for r in self.epochs if r.alert]
        ax2.scatter(
            [r.epoch + 1 for r in alerts],
            [r.gap for r in alerts],
            marker="x",
            s=80,
            color="k",
            label="alert",
            zorder=3,
        )
        ax2.axhline(0.0, color="grey", lw=0.8)
        ax2.set(xlabel="epoch", ylabel="H0 gap", title="Overfitting monitor")
        ax2.legend()
        tree = Figure(figsize=(6, 3.6))
        ax = tree.subplots()
        dendrogram(self.geometry.diagram.linkage.numpy(), labels=list(self.class_names), ax=ax)
        ax.set(ylabel="cosine distance", title="Class merge tree (validation, single linkage)")
        pairs = Figure(figsize=(9, 3.6))
        bx1, bx2 = pairs.subplots(1, 2)
        bx1.scatter(self.confusion_score.distance, self.confusion_score.rate)
        bx1.set(
            xlabel="class distance (predicted closeness)",
            ylabel="pair confusion rate",
            title=f"Confusion: Spearman {_fmt(self.confusion_score.spearman)}",
        )
        bx2.scatter(self.fgsm_score.distance, self.fgsm_score.rate, color="C1")
        bx2.set(
            xlabel="class distance",
            ylabel=f"FGSM pair vulnerability (eps {self.fgsm.epsilon:g})",
            title=f"FGSM: Spearman {_fmt(self.fgsm_score.spearman)}",
        )
        return {"h0_curves": curves, "dendrogram": tree, "predicted_vs_actual": pairs}

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["geometry"] = {
            "mode": self.geometry.mode,
            "h0": self.geometry.h0,
            "distances": self.geometry.distances.tolist(),
            "spread": self.geometry.spread.tolist(),
            "deaths": self.geometry.diagram.deaths.tolist(),
            "merge_order": [
                [self.class_names[int(a)], self.class_names[int(b)], float(d)]
                for (a, b), d in zip(
                    self.geometry.diagram.merge_order, self.geometry.diagram.deaths, strict=True
                )
            ],
            "linkage": self.geometry.diagram.linkage.tolist(),
        }
        out["fgsm"] = {f.name: jsonable(getattr(self.fgsm, f.name)) for f in dataclasses.fields(self.fgsm)}
        return dict(jsonable(out))


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.2f}"
