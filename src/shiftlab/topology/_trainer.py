"""PHTrainer: difficulty probe, LR search, monitored training, and the topological analysis."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from shiftlab.topology._analysis import confusion_matrix, pair_confusion_rates, score_pairs
from shiftlab.topology._attack import fgsm_pair_vulnerability
from shiftlab.topology._config import PHTrainConfig
from shiftlab.topology._geometry import ClassGeometry, _resolve_layer, class_geometry_from_features
from shiftlab.topology._layers import LayerPHMonitor
from shiftlab.topology._lr import LRCandidate, choose_lr, h0_coefficient_of_variation
from shiftlab.topology._models import build_model, monitored_layers
from shiftlab.topology._monitor import PHMonitor
from shiftlab.topology._reference import DIFFICULTY_REFERENCE
from shiftlab.topology._report import EpochRecord, PHTrainReport

__all__ = ["PHTrainer"]


@dataclass(frozen=True)
class _Split:
    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class _Pass:
    """One evaluation pass: mean loss, accuracy, predictions and geometry features."""

    loss: float
    accuracy: float
    predictions: torch.Tensor
    features: torch.Tensor


def _stratified(y: torch.Tensor, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, held) with ``round(fraction * n_c)`` (at least 2) of every class ``c`` held."""
    held, rest = [], []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        k = max(2, round(fraction * members.numel()))
        if members.numel() - k < 2:
            raise ValueError(f"class {int(c)} has {members.numel()} samples: too few to split")
        held.append(members[:k])
        rest.append(members[k:])
    return torch.sort(torch.cat(rest)).values, torch.sort(torch.cat(held)).values


def _probe(fit: _Split, val_labels: torch.Tensor, gen: torch.Generator) -> _Split:
    """Training samples with the validation's class counts, so that the monitor's null is a split-half."""
    parts = []
    for c in torch.unique(val_labels):
        members = torch.nonzero(fit.y == c).flatten()
        want = int((val_labels == c).sum())
        if members.numel() < want:
            raise ValueError(f"class {int(c)} has {members.numel()} training samples, fewer than {want}")
        parts.append(members[torch.randperm(members.numel(), generator=gen)[:want]])
    idx = torch.sort(torch.cat(parts)).values
    return _Split(fit.x[idx], fit.y[idx])


class PHTrainer:
    """The four-phase PH training pipeline on one data set; :meth:`run` returns a :class:`PHTrainReport`.

    1. **Difficulty**: H0 of the validation class geometry after one epoch at a fixed learning rate,
       beside the reference table of the bundled data sets.
    2. **LR search** (when ``config.lr`` is ``None``, or alone via :meth:`search_lr`): per candidate,
       the H0 coefficient of variation over ``search_epochs`` epochs, the validation accuracy and loss;
       ``lr_criterion`` picks one (:func:`choose_lr`), all three choices are reported. A candidate's
       search run is the first ``search_epochs`` epochs of phase 3 at that rate (same initial weights,
       same batch order).
    3. **Training** with :class:`PHMonitor` on a fixed train probe vs validation (stop after ``patience``
       consecutive calibrated alerts) and :class:`LayerPHMonitor`; the checkpoint with the best
       validation accuracy is kept. The test split is evaluated once, at the end.
    4. **Analysis** on validation: confusion pairs predicted from all class distances and scored against
       the confusion matrix, the class dendrogram, and a real FGSM attack per class pair.

    Examples
    --------
    >>> report = PHTrainer(PHTrainConfig(dataset="digits", epochs=1, lr=1e-3, device="cpu")).run(quiet=True)
    >>> report.kind, len(report.epochs), 0.0 <= report.test_accuracy <= 1.0
    ('ph-train', 1, True)
    """

    def __init__(self, config: PHTrainConfig | None = None) -> None:
        self.config = PHTrainConfig() if config is None else config
        if not isinstance(self.config, PHTrainConfig):
            raise TypeError(f"config must be a PHTrainConfig; got {type(self.config).__name__}")
        if self.config.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but CUDA is not available; use device='cpu' or 'auto'")

    # ------------------------------------------------------------------------------------------ data

    def _load(self) -> tuple[_Split, _Split, _Split, _Split, tuple[str, ...]]:
        from shiftlab.data import load

        cfg = self.config
        train = load(cfg.dataset, "train", root=cfg.data_dir)
        test = load(cfg.dataset, "test", root=cfg.data_dir)
        gen = torch.Generator().manual_seed(cfg.seed)
        x, y = train.images, train.labels
        if cfg.max_train is not None and cfg.max_train < x.shape[0]:
            _, keep = _stratified(y, cfg.max_train / x.shape[0], gen)
            x, y = x[keep], y[keep]
        rest, held = _stratified(y, cfg.val_fraction, gen)
        val = _Split(x[held], y[held])
        fit = _Split(x[rest], y[rest])
        probe = _probe(fit, val.y, gen)
        return fit, val, probe, _Split(test.images, test.labels), train.class_names

    # ---------------------------------------------------------------------------------- primitives

    def _device(self) -> torch.device:
        if self.config.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.config.device)

    def _fresh(self, shape: tuple[int, int, int], n_classes: int) -> nn.Module:
        return build_model(self.config.model, shape, n_classes, seed=self.config.seed).to(self._device())

    def _optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        if self.config.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=self.config.momentum)
        return torch.optim.Adam(model.parameters(), lr=lr)

    def _epoch(
        self, model: nn.Module, opt: torch.optim.Optimizer, data: _Split, gen: torch.Generator
    ) -> None:
        model.train()
        device = self._device()
        order = torch.randperm(data.y.numel(), generator=gen)
        for start in range(0, order.numel(), self.config.batch_size):
            idx = order[start : start + self.config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = functional.cross_entropy(model(data.x[idx].to(device)), data.y[idx].to(device))
            loss.backward()
            opt.step()

    def _evaluate(self, model: nn.Module, data: _Split) -> _Pass:
        model.eval()
        device = self._device()
        captured: list[torch.Tensor] = []
        handle = None
        if self.config.layer is not None:
            handle = _resolve_layer(model, self.config.layer).register_forward_hook(
                lambda _m, _i, out: captured.append(out.detach().flatten(1).to(torch.float64).cpu())
            )
        losses, preds, feats = [], [], []
        try:
            with torch.no_grad():
                for start in range(0, data.y.numel(), 1024):
                    logits = model(data.x[start : start + 1024].to(device))
                    yb = data.y[start : start + 1024].to(device)
                    losses.append(functional.cross_entropy(logits, yb, reduction="sum").cpu())
                    preds.append(logits.argmax(dim=1).cpu())
                    feats.append(captured.pop() if handle else logits.to(torch.float64).cpu())
        finally:
            if handle is not None:
                handle.remove()
        predictions = torch.cat(preds)
        loss = float(torch.stack(losses).sum()) / data.y.numel()
        if not math.isfinite(loss):
            raise FloatingPointError("the validation loss is not finite: training diverged (lower the lr)")
        accuracy = float((predictions == data.y).to(torch.float64).mean())
        return _Pass(loss, accuracy, predictions, torch.cat(feats))

    def _geometry(self, run: _Pass, y: torch.Tensor, n_classes: int) -> ClassGeometry:
        return class_geometry_from_features(
            run.features, y, n_classes=n_classes, mode=self.config.monitor.mode
        )

    # -------------------------------------------------------------------------------------- phases

    def run(
        self, *, quiet: bool = False, on_epoch_end: Callable[[EpochRecord], None] | None = None
    ) -> PHTrainReport:
        """Run the four phases and return the report (``quiet`` hides the progress bars).

        ``on_epoch_end`` is called with each phase-3 :class:`EpochRecord` as soon as it exists, e.g.
        ``functools.partial(shiftlab.integrations.loggers.log_epoch, logger, prefix="ph/")``.
        """
        cfg = self.config
        fit, val, probe, test, class_names = self._load()
        shape = (int(fit.x.shape[1]), int(fit.x.shape[2]), int(fit.x.shape[3]))
        c = len(class_names)
        candidates = cfg.lr_candidates if cfg.lr is None else ()
        total = 1 + len(candidates) * cfg.search_epochs + cfg.epochs + 1
        with _progress(quiet, total) as advance:
            # phase 1: difficulty
            difficulty, first = self._difficulty(fit, val, shape, c)
            advance("difficulty")
            # phase 2: learning-rate search
            searched = [self._search_one(lr, fit, val, shape, c, advance) for lr in candidates]
            chosen, by_acc, by_loss, by_cv = self._choose(searched)
            # phase 3: monitored training
            model = self._fresh(shape, c)
            opt = self._optimizer(model, chosen)
            monitor = PHMonitor(cfg.monitor)
            layer_monitor = LayerPHMonitor(monitored_layers(cfg.model), cfg.layers)
            layer_probe = val.x[: cfg.probe_size]
            gen = _gen(cfg.seed + 1)
            records: list[EpochRecord] = []
            best_state: dict[str, Any] = copy.deepcopy(model.state_dict())
            best_acc, best_epoch = -1.0, 0
            for epoch in range(cfg.epochs):
                self._epoch(model, opt, fit, gen)
                on_probe, on_val = self._evaluate(model, probe), self._evaluate(model, val)
                step = monitor.update(on_probe.features, probe.y, on_val.features, val.y)
                layer_step = layer_monitor.update(model, layer_probe)
                records.append(EpochRecord.from_steps(epoch, on_probe, on_val, step, layer_step))
                if on_epoch_end is not None:
                    on_epoch_end(records[-1])
                if on_val.accuracy > best_acc:
                    best_acc, best_epoch = on_val.accuracy, epoch
                    best_state = copy.deepcopy(model.state_dict())
                advance(f"epoch {epoch + 1}")
                if step.stop:
                    break
            model.load_state_dict(best_state)
            # phase 4: analysis on validation, then the one test evaluation
            final_val = self._evaluate(model, val)
            geometry = self._geometry(final_val, val.y, c)
            confusion = confusion_matrix(final_val.predictions, val.y, c)
            gen_attack = _gen(cfg.seed + 2)
            attack_idx = torch.randperm(val.y.numel(), generator=gen_attack)[: cfg.fgsm_max_samples]
            attack = fgsm_pair_vulnerability(
                model, val.x[attack_idx], val.y[attack_idx], c, epsilon=cfg.fgsm_epsilon
            )
            on_test = self._evaluate(model, test)
            advance("analysis")
        stop_epoch = next((r.epoch for r in records if r.stop), None)
        return PHTrainReport(
            dataset=cfg.dataset,
            model=cfg.model,
            class_names=class_names,
            n_train=int(fit.y.numel()),
            n_val=int(val.y.numel()),
            n_test=int(test.y.numel()),
            config=cfg.to_dict(),
            difficulty_h0=difficulty,
            difficulty_val_accuracy=first.accuracy,
            difficulty_reference=DIFFICULTY_REFERENCE,
            lr_search=tuple(searched),
            lr_criterion=cfg.lr_criterion,
            lr_chosen=chosen,
            lr_by_val_accuracy=by_acc,
            lr_by_val_loss=by_loss,
            lr_by_h0_cv=by_cv,
            epochs=tuple(records),
            stop_epoch=stop_epoch,
            best_epoch=best_epoch,
            test_accuracy=on_test.accuracy,
            test_loss=on_test.loss,
            geometry=geometry,
            confusion=confusion,
            confusion_score=score_pairs(
                geometry.distances,
                pair_confusion_rates(confusion),
                k=min(cfg.top_k, c * (c - 1) // 2),
                seed=cfg.seed,
            ),
            fgsm=attack,
            fgsm_score=score_pairs(
                geometry.distances,
                attack.pair_vulnerability,
                k=min(cfg.top_k, c * (c - 1) // 2),
                seed=cfg.seed,
            ),
        )

    def difficulty(self) -> tuple[float, float]:
        """Phase 1 alone: validation H0 and validation accuracy after one epoch at ``difficulty_lr``.

        This is the protocol of the reference table (``examples/ph_difficulty_reference.py``).
        """
        fit, val, _, _, class_names = self._load()
        shape = (int(fit.x.shape[1]), int(fit.x.shape[2]), int(fit.x.shape[3]))
        h0, first = self._difficulty(fit, val, shape, len(class_names))
        return h0, first.accuracy

    def _difficulty(
        self, fit: _Split, val: _Split, shape: tuple[int, int, int], c: int
    ) -> tuple[float, _Pass]:
        model = self._fresh(shape, c)
        opt = torch.optim.Adam(model.parameters(), lr=self.config.difficulty_lr)
        self._epoch(model, opt, fit, _gen(self.config.seed))
        first = self._evaluate(model, val)
        return self._geometry(first, val.y, c).h0, first

    def search_lr(self, *, quiet: bool = True) -> tuple[LRCandidate, ...]:
        """Phase 2 alone: one :class:`LRCandidate` per entry of ``config.lr_candidates``.

        Each candidate trains a fresh model (``config.seed``) for ``search_epochs`` epochs with
        ``config.optimizer``; :func:`choose_lr` turns the result into a choice. ``config.lr`` is ignored.
        """
        cfg = self.config
        fit, val, _, _, class_names = self._load()
        shape = (int(fit.x.shape[1]), int(fit.x.shape[2]), int(fit.x.shape[3]))
        with _progress(quiet, len(cfg.lr_candidates) * cfg.search_epochs) as advance:
            return tuple(
                self._search_one(lr, fit, val, shape, len(class_names), advance) for lr in cfg.lr_candidates
            )

    def _search_one(
        self, lr: float, fit: _Split, val: _Split, shape: tuple[int, int, int], c: int, advance: Any
    ) -> LRCandidate:
        model = self._fresh(shape, c)
        opt = self._optimizer(model, lr)
        gen = _gen(self.config.seed + 1)
        trajectory: list[float] = []
        last: _Pass | None = None
        for epoch in range(self.config.search_epochs):
            self._epoch(model, opt, fit, gen)
            try:
                last = self._evaluate(model, val)
            except FloatingPointError:
                for _ in range(epoch, self.config.search_epochs):
                    advance(f"lr {lr:g} diverged")
                return LRCandidate(lr, tuple(trajectory), None, math.nan, math.inf, diverged=True)
            trajectory.append(self._geometry(last, val.y, c).h0)
            advance(f"lr {lr:g}")
        assert last is not None
        return LRCandidate(
            lr=lr,
            h0_trajectory=tuple(trajectory),
            h0_cv=h0_coefficient_of_variation(trajectory),
            val_accuracy=last.accuracy,
            val_loss=last.loss,
        )

    def _choose(self, searched: list[LRCandidate]) -> tuple[float, float | None, float | None, float | None]:
        """(chosen, by validation accuracy, by validation loss, by H0 CV); ``config.lr`` when fixed."""
        cfg = self.config
        if not searched:
            assert cfg.lr is not None
            return cfg.lr, None, None, None
        chosen = choose_lr(searched, cfg.lr_criterion)
        by_acc, by_loss = choose_lr(searched, "val_accuracy"), choose_lr(searched, "val_loss")
        defined = any(r.h0_cv is not None and not r.diverged for r in searched)
        return chosen, by_acc, by_loss, (choose_lr(searched, "h0_cv") if defined else None)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextmanager
def _progress(quiet: bool, total: int) -> Iterator[Any]:
    """A rich progress bar on stderr (so ``--json`` output stays clean), or a no-op when quiet."""
    if quiet:
        yield lambda _label: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("PH training", total=total)

        def advance(label: str) -> None:
            bar.update(task, advance=1, description=f"PH training: {label}")

        yield advance
