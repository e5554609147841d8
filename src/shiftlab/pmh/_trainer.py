r"""``PMHTrainer``: train a copy of a model with the PMH penalty, log it, checkpoint it, resume it.

Each step minimises

.. math:: L = \mathrm{CE}(f(x), y) + c \cdot \frac{1}{k}\sum_{b \le k}
          \operatorname{tr}\!\big(J_b \Sigma' J_b^\top\big),

with Σ' the arm's covariance (matched, isotropic, wrong or signal; :func:`control_estimate`), the penalty on
the first ``k = ⌈penalty_fraction · B⌉`` rows of the (randomly ordered) batch, the task loss on the whole
batch from the penalty's own unperturbed output (no extra forward pass), and ``c = λ`` (plain sum) or the
:class:`LossBudget` coefficient. The user's model is deep-copied once in ``__init__``; layers are
resolved by name on the copy; the original is never touched. Under ``torchrun`` the same step runs
data-parallel, each rank on a disjoint slice of every global batch (:mod:`shiftlab.pmh._train_dist`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shiftlab.pmh._checkpoint import load_checkpoint, save_checkpoint
from shiftlab.pmh._controls import MODES, control_estimate
from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators import ESTIMATORS, estimate_nuisance
from shiftlab.pmh._layers import INPUT, OUTPUT, check_site_names
from shiftlab.pmh._train_config import TrainConfig
from shiftlab.pmh._train_data import Batches, EpochLog, FitResult, check_xy, progress, tensor_batches
from shiftlab.pmh._train_dist import DataParallel
from shiftlab.pmh._train_epoch import train_epoch

__all__ = ["EpochLog", "FitResult", "PMHTrainer"]


def _model_kwargs(kind: str, site: str, kwargs: dict[str, Any]) -> bool:
    """Does estimator ``kind`` with these arguments need the model (a layer site, pseudo-labels, PGD)?"""
    if site != INPUT or kind == "adversarial":
        return True
    return (
        kind == "domain" and kwargs.get("target_labels") is None and kwargs.get("source_labels") is not None
    )


class PMHTrainer:
    """Train a deep copy of ``model`` with the PMH penalty.

    Parameters
    ----------
    model
        Classifier returning logits ``(B, classes)``; it is deep-copied once and never modified.
    site
        Where Σ lives and the penalty perturbs: ``"input"`` or a layer name of ``model``.
    measure
        ``"output"`` or the name of a layer above ``site`` whose output is measured.
    config
        :class:`TrainConfig`.
    process_group
        ``"auto"`` (default): data-parallel over the default ``torch.distributed`` group when one with
        more than one rank is initialised (e.g. under ``torchrun``), single-process otherwise; ``"off"``:
        always single-process; or a ``ProcessGroup``. Data-parallel training starts every rank from rank
        0's weights, splits each global batch of ``config.batch_size`` rows between the ranks, and sums
        the gradients so that each step is the single-process step on the global batch (see
        :mod:`shiftlab.pmh._train_dist`); logs hold global means, only rank 0 shows progress and writes
        checkpoints (``checkpoint_dir`` must be visible to every rank). Give every rank the same
        ``(x, y)`` and the same estimate (checked; rank 0's is used); a loader is taken as the rank's
        own shard (a ``DistributedSampler``, whose ``set_epoch`` the trainer calls) and needs a
        ``len()`` equal on every rank. The weights equal a single-process fit's up to rounding when the
        penalty draws no random probes (``jvp`` on an estimate without floor); ``fd``/``hutchinson``
        probes are drawn per rank from independent streams. BatchNorm normalises with each rank's
        batch statistics and keeps rank 0's running statistics.

    Attributes
    ----------
    model
        The copy being trained (on ``config``'s device; under ``torchrun`` a bare ``cuda`` means the
        rank's ``LOCAL_RANK`` GPU).
    estimate_
        The matched Σ from :meth:`estimate` (``None`` until then).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(64, 4, generator=g); y = (x[:, 0] > 0).long()
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> trainer = PMHTrainer(net, config=TrainConfig(epochs=2, batch_size=16, device="cpu"))
    >>> sigma = trainer.estimate("isotropic", sigma=0.1, dim=4)
    >>> result = trainer.fit((x, y), quiet=True)
    >>> len(result.history), result.model is trainer.model, result.model is net
    (2, True, False)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        site: str = INPUT,
        measure: str = OUTPUT,
        config: TrainConfig | None = None,
        process_group: Any = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        config = TrainConfig() if config is None else config
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
        for name, value in (("site", site), ("measure", measure)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str; got {type(value).__name__}")
        if site == OUTPUT:
            raise ValueError("site 'output' is a measurement point; perturb at 'input' or a layer name")
        self.config = config
        self._parallel = DataParallel.resolve(process_group, config.resolved_device())
        self.device = config.resolved_device() if self._parallel is None else self._parallel.device
        self.model = copy.deepcopy(model).to(self.device)
        check_site_names(self.model, site, measure)
        if self._parallel is not None:
            self._parallel.broadcast_module(self.model)
        self.site = site
        self.measure = measure
        self.estimate_: NuisanceEstimate | None = None
        self._recipe: tuple[str, dict[str, Any]] | None = None

    def estimate(self, kind: str, *, using: nn.Module | None = None, **kwargs: Any) -> NuisanceEstimate:
        """Estimate the matched Σ with ``estimate_nuisance(kind, **kwargs)`` at the trainer's site.

        The trainer fills ``site`` and, for model-based estimators (a layer site, ``domain`` with
        pseudo-labels, ``adversarial``), ``model``: ``using`` when given (e.g. a model already trained on
        the source, whose features are meaningful), else the trainer's own model. Either way the
        estimator works on a frozen copy, and re-estimation during :meth:`fit`
        (``config.reestimate_every > 0``) uses the model being trained. Pass the model as ``using``,
        not ``model``.

        Returns
        -------
        NuisanceEstimate
            Also stored as ``estimate_``.
        """
        if not isinstance(kind, str) or kind not in ESTIMATORS:
            raise ValueError(f"unknown nuisance kind {kind!r}; choose one of: {', '.join(ESTIMATORS)}")
        if "model" in kwargs:
            raise TypeError(
                "pass the estimation model as using=, not model= (default: the trainer's own model)"
            )
        if using is not None and not isinstance(using, nn.Module):
            raise TypeError(f"using must be a torch.nn.Module; got {type(using).__name__}")
        if kwargs.get("site", self.site) != self.site:
            raise ValueError(f"site={kwargs['site']!r} differs from the trainer's site {self.site!r}")
        accepted = inspect.signature(ESTIMATORS[kind]).parameters
        call = dict(kwargs)
        if "site" in accepted:
            call["site"] = self.site
        if _model_kwargs(kind, self.site, call):
            call["model"] = self.model if using is None else using
        estimate = estimate_nuisance(kind, **call)
        self.estimate_ = estimate
        self._recipe = (kind, {k: v for k, v in call.items() if k != "model"}) if "model" in call else None
        return estimate

    def _reestimate(self) -> NuisanceEstimate:
        assert self._recipe is not None
        kind, kwargs = self._recipe
        was_training = self.model.training
        estimate = estimate_nuisance(kind, model=self.model, **kwargs)
        self.model.train(was_training)
        return estimate

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _check_estimate(self, estimate: NuisanceEstimate | None, mode: str) -> NuisanceEstimate | None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        chosen = self.estimate_ if estimate is None else estimate
        if chosen is not None and not isinstance(chosen, NuisanceEstimate):
            raise TypeError(f"estimate must be a NuisanceEstimate; got {type(chosen).__name__}")
        if chosen is None and mode != "matched":
            raise ValueError(f"mode {mode!r} is a control built from an estimate; call .estimate(...) first")
        if chosen is not None and chosen.site != self.site:
            raise ValueError(f"the estimate lives at site {chosen.site!r}, the trainer at {self.site!r}")
        if (
            self.config.reestimate_every
            and self.config.strength > 0
            and chosen is not None
            and self._recipe is None
        ):
            raise ValueError(
                "reestimate_every > 0 needs a model-based estimate made with trainer.estimate(...) "
                "(a layer site, domain with pseudo-labels, or adversarial); set reestimate_every=0"
            )
        return chosen

    def fit(
        self,
        train: Iterable[Any] | tuple[torch.Tensor, torch.Tensor],
        *,
        estimate: NuisanceEstimate | None = None,
        mode: str = "matched",
        val: tuple[torch.Tensor, torch.Tensor] | None = None,
        quiet: bool = False,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        on_epoch_end: Callable[[EpochLog], None] | None = None,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ) -> FitResult:
        """Train ``self.model`` for ``config.epochs`` epochs with the ``mode`` arm of the penalty.

        Parameters
        ----------
        train
            ``(x, y)`` tensors (batched in a seeded order: epoch ``e`` uses seed ``(config.seed, e)``, so
            every arm with the same seed sees the same batches) or an iterable of ``(x, y)`` batches
            such as a ``DataLoader`` (its own order).
        estimate
            The matched Σ; default ``self.estimate_``. With neither, or ``strength == 0``, training is
            plain (no penalty).
        mode
            ``"matched"``, ``"isotropic"``, ``"wrong"`` or ``"signal"``.
        val
            ``(x, y)`` whose accuracy is logged after each epoch.
        quiet
            No progress bar.
        checkpoint_dir
            Write ``checkpoint.pt`` there after every epoch (atomic; tensors and plain types only).
        resume
            Continue from ``checkpoint_dir/checkpoint.pt`` when it exists (fresh start otherwise); the
            checkpoint's config must equal this trainer's.
        on_epoch_end
            Called with each :class:`EpochLog` (after the checkpoint is written).
        augment
            ``aug(x, generator) -> x'`` applied to every training batch before the step (on the batch's
            device; the generator is seeded per epoch), e.g. :func:`~shiftlab.pmh.random_shift`.

        Returns
        -------
        FitResult
        """
        c = self.config
        parallel = self._parallel
        error: Exception | None = None
        try:
            matched = self._check_estimate(estimate, mode)
            batches = self._batches(train)
            if val is not None:
                val = check_xy(val, "val")
            if augment is not None and not callable(augment):
                raise TypeError(f"augment must be a callable aug(x, generator); got {type(augment).__name__}")
            if resume and checkpoint_dir is None:
                raise ValueError("resume=True needs checkpoint_dir")
            penalised = matched is not None and c.strength > 0
            run_mode = mode if penalised else "plain"
            if penalised and matched is not None and matched.site == INPUT and isinstance(train, tuple):
                first = train[0]
                if tuple(first.shape[1:]) != matched.shape:
                    raise ValueError(
                        f"the estimate lives on inputs of shape {matched.shape}; "
                        f"the data has {tuple(first.shape[1:])}"
                    )
            optimizer = self._optimizer()
            budget = c.budget.build() if c.budget is not None and penalised else None
            if budget is not None:
                if batches.steps is None:
                    raise TypeError("the loss budget needs the number of steps: pass a loader with len()")
                budget.start(c.epochs * batches.steps)
        except (ValueError, TypeError) as err:
            if parallel is None:
                raise
            error = err
        path = None if checkpoint_dir is None else Path(checkpoint_dir) / "checkpoint.pt"
        resuming = resume and path is not None and path.is_file()
        if parallel is not None:
            parallel.raise_together(error)
            settings = {k: v for k, v in c.to_dict().items() if k != "device"}
            parallel.check_fit(settings, run_mode, batches.steps, val, augment, path, resuming)
            matched = parallel.broadcast_estimate(matched)
        history: list[EpochLog] = []
        start, resumed_from = 0, None
        if resuming:
            assert path is not None
            state = load_checkpoint(path, c, self.model, optimizer, budget, run_mode)
            start = resumed_from = state.epoch
            history = [EpochLog(**entry) for entry in state.history]
            if state.estimate is not None:
                matched = state.estimate
        arm = self._arm(matched, mode) if penalised and matched is not None else None
        silent = quiet or (parallel is not None and parallel.rank != 0)
        with progress(silent, c.epochs - start, f"PMH {mode if penalised else 'plain'}") as advance:
            for epoch in range(start, c.epochs):
                log = train_epoch(
                    self.model,
                    epoch,
                    batches,
                    optimizer,
                    arm,
                    budget,
                    val,
                    augment,
                    config=c,
                    measure=self.measure,
                    device=self.device,
                    parallel=parallel,
                )
                due = c.reestimate_every and (epoch + 1) % c.reestimate_every == 0 and epoch + 1 < c.epochs
                if arm is not None and due:
                    matched = self._reestimate()
                    if parallel is not None:
                        matched = parallel.broadcast_estimate(matched)
                    arm = self._arm(matched, mode)
                    log = dataclasses.replace(log, reestimated=True)
                history.append(log)
                if path is not None and (parallel is None or parallel.rank == 0):
                    reestimated = matched if self._recipe is not None and c.reestimate_every else None
                    save_checkpoint(
                        path, c, epoch + 1, self.model, optimizer, budget, history, reestimated, run_mode
                    )
                if path is not None and parallel is not None:
                    parallel.barrier()
                if on_epoch_end is not None:
                    on_epoch_end(log)
                shown = "" if log.val_accuracy is None else f", val acc {log.val_accuracy:.3f}"
                advance(f"epoch {epoch + 1}, loss {log.task_loss:.3f}, ratio {log.applied_ratio:.3f}{shown}")
        if budget is not None and start < c.epochs:
            budget.finish()
        self.model.eval()
        return FitResult(
            model=self.model,
            history=tuple(history),
            estimate=matched,
            mode=mode,
            strength=c.strength if penalised else 0.0,
            resumed_from=resumed_from,
        )

    def _batches(self, train: Any) -> Batches:
        if isinstance(train, tuple):
            x, y = check_xy(train, "train")
            return tensor_batches(x, y, self.config.batch_size, self.config.seed)
        if isinstance(train, torch.Tensor) or not isinstance(train, Iterable):
            raise TypeError("train must be an (x, y) tuple of tensors or an iterable of (x, y) batches")
        return Batches.from_iterable(train)

    def _arm(self, matched: NuisanceEstimate, mode: str) -> NuisanceEstimate:
        """The arm's Σ', built once per estimate (the wrong control's subspace stays fixed)."""
        return control_estimate(matched, mode, seed=self.config.seed)
