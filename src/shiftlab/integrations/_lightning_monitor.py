r"""Lightning callbacks for the H0 monitors: the train/validation gap with a stop rule, and layer collapse.

:class:`PHMonitorCallback` shares the probe rows over the ranks of a distributed strategy and all-gathers
the features back into their original order, so every rank takes the same stop decision;
:class:`LayerMonitorCallback` runs on global rank 0 only. Both log through ``pl_module.log``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from shiftlab.integrations._optional import require
from shiftlab.topology import (
    LayerConfig,
    LayerPHMonitor,
    LayerState,
    MonitorConfig,
    PHMonitor,
    extract_features,
)

if TYPE_CHECKING:
    import lightning.pytorch as pl
else:
    pl = require("lightning.pytorch", "lightning")

__all__ = ["LAYER_STATE_CODES", "LayerMonitorCallback", "PHMonitorCallback"]

#: Numeric code logged for each layer state (loggers take numbers): 0 healthy, 1 watch, 2 collapse.
LAYER_STATE_CODES: dict[LayerState, int] = {
    LayerState.HEALTHY: 0,
    LayerState.WATCH: 1,
    LayerState.COLLAPSE: 2,
}


def _labelled(data: tuple[torch.Tensor, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TypeError(f"{name} must be an (inputs, labels) pair of tensors")
    x, y = data
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must hold tensors; got {type(x).__name__}, {type(y).__name__}")
    if x.ndim < 2 or not x.is_floating_point():
        raise ValueError(
            f"{name} inputs must be a floating-point batch (n, ...); got {x.dtype} {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} inputs contain NaN or infinite values")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name} labels must have shape ({x.shape[0]},); got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name} labels must be an integer tensor; got {y.dtype}")
    if bool((y < 0).any()):
        raise ValueError(f"{name} labels must be non-negative class indices")
    return x, y.to(torch.int64)


def _gather_rows(trainer: pl.Trainer, local: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """Reassemble rows ``rank::W`` of every rank into the original order of ``n`` rows (on the CPU)."""
    world = trainer.world_size
    if world == 1:
        return local
    per_rank = math.ceil(n / world)
    padded = local.new_zeros(per_rank, *local.shape[1:])
    padded[: local.shape[0]] = local
    gathered = trainer.strategy.all_gather(padded.to(device))
    assert isinstance(gathered, torch.Tensor)
    # rank r's j-th row is row j * W + r; padding only ever lands at positions >= n
    return gathered.cpu().transpose(0, 1).reshape(per_rank * world, *local.shape[1:])[:n]


class PHMonitorCallback(pl.Callback):
    """Run :class:`~shiftlab.topology.PHMonitor` after each training epoch; log it and stop on its rule.

    At ``on_train_epoch_end`` the features of ``layer`` (the module's output by default) are extracted on a
    copy of the module in eval mode (:func:`~shiftlab.topology.extract_features`) for ``train_probe`` and
    ``val``; :meth:`PHMonitor.update` computes H0 of both class geometries, their gap
    :math:`h_0^{tr} - h_0^{va}` and the split-null noise floor. Logged (epoch level, prefix ``prefix``):
    ``h0_train``, ``h0_val``, ``gap``, ``noise_floor``, ``p_value``, ``alert`` (0/1) and ``consecutive``.
    When the monitor's stop rule fires (``config.patience`` consecutive alerts, see
    :func:`~shiftlab.topology.consecutive_alert_stop`) and ``stop`` is true, ``trainer.should_stop`` is set.

    Parameters
    ----------
    train_probe
        ``(x, y)``: a fixed set of training samples (ideally the size of ``val``, so the null is a
        split-half of equal parts). Every class ``0 .. C-1`` needs at least 2 samples here and in ``val``.
    val
        ``(x, y)`` validation samples.
    config
        :class:`~shiftlab.topology.MonitorConfig` (level, patience, null draws, geometry mode, seed).
    layer
        Name of a sub-module of the ``LightningModule`` (as in ``named_modules()``, e.g. ``"net.2"``) whose
        output is the feature; ``None`` for the module's output.
    prefix
        Prepended to every logged name.
    stop
        Set ``trainer.should_stop`` when the rule fires (``False``: monitor and log only).
    batch_size
        Rows per forward pass during extraction.

    Attributes
    ----------
    monitor
        The :class:`~shiftlab.topology.PHMonitor`; ``monitor.history`` holds every epoch's step on every rank.
        It is not saved in checkpoints: a resumed run starts a fresh count of consecutive alerts.

    Examples
    --------
    >>> import torch
    >>> y = torch.arange(40) % 4
    >>> callback = PHMonitorCallback((torch.randn(40, 6), y), (torch.randn(40, 6), y))
    >>> callback.monitor.config.patience, callback.n_classes
    (3, 4)
    """

    def __init__(
        self,
        train_probe: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        *,
        config: MonitorConfig | None = None,
        layer: str | None = None,
        prefix: str = "ph/",
        stop: bool = True,
        batch_size: int = 1024,
    ) -> None:
        super().__init__()
        xt, yt = _labelled(train_probe, "train_probe")
        xv, yv = _labelled(val, "val")
        if xt.shape[1:] != xv.shape[1:]:
            raise ValueError(
                f"train_probe and val inputs differ in shape: {tuple(xt.shape[1:])} vs {tuple(xv.shape[1:])}"
            )
        c = int(max(int(yt.max()), int(yv.max()))) + 1
        for name, labels in (("train_probe", yt), ("val", yv)):
            short = torch.nonzero(torch.bincount(labels, minlength=c) < 2).flatten().tolist()
            if short:
                raise ValueError(
                    f"{name} needs at least 2 samples of every class 0..{c - 1}; classes {short} lack them"
                )
        if config is not None and not isinstance(config, MonitorConfig):
            raise TypeError(f"config must be a MonitorConfig; got {type(config).__name__}")
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"layer must be a layer name (str) or None; got {type(layer).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
        self.train_probe = (xt, yt)
        self.val = (xv, yv)
        self.n_classes = c
        self.layer = layer
        self.prefix = prefix
        self.stop = bool(stop)
        self.batch_size = batch_size
        self.monitor = PHMonitor(config)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the layer name against the module before the first step."""
        names = {name for name, _ in pl_module.named_modules() if name}
        if self.layer is not None and self.layer not in names:
            shown = ", ".join(sorted(names)[:30])
            raise ValueError(f"unknown layer {self.layer!r}; valid layer names: {shown}")

    def _features(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the train probe and of ``val``: this rank's rows, then all ranks' rows in order."""
        x = torch.cat([self.train_probe[0], self.val[0]])
        rank, world = trainer.global_rank, trainer.world_size
        if x.shape[0] < world:
            raise ValueError(f"{x.shape[0]} probe rows cannot be shared by {world} processes")
        shard = x[rank::world]
        dummy = torch.zeros(shard.shape[0], dtype=torch.int64)
        batches = list(zip(shard.split(self.batch_size), dummy.split(self.batch_size), strict=True))
        local, _ = extract_features(pl_module, batches, layer=self.layer, device=pl_module.device)
        features = _gather_rows(trainer, local, x.shape[0], pl_module.device)
        n_train = self.train_probe[0].shape[0]
        return features[:n_train], features[n_train:]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Update the monitor on all ranks' features, log the step, and apply the stop rule."""
        ft, fv = self._features(trainer, pl_module)
        step = self.monitor.update(ft, self.train_probe[1], fv, self.val[1])
        values = {
            "h0_train": step.h0_train,
            "h0_val": step.h0_val,
            "gap": step.gap,
            "noise_floor": step.noise_floor,
            "p_value": step.p_value,
            "alert": float(step.alert),
            "consecutive": float(step.consecutive),
        }
        for name, value in values.items():
            # identical on every rank (gathered features, same seed): the mean over ranks is the value itself
            pl_module.log(self.prefix + name, value, on_step=False, on_epoch=True, sync_dist=True)
        if step.stop and self.stop:
            trainer.should_stop = True


class LayerMonitorCallback(pl.Callback):
    """Run :class:`~shiftlab.topology.LayerPHMonitor` on a probe batch after each training epoch and log it.

    Logged (epoch level, prefix ``prefix``): ``state`` (:data:`LAYER_STATE_CODES`: 0 HEALTHY, 1 WATCH,
    2 COLLAPSE), ``mean_death`` (the mean H0 merge height of the layers under :math:`1 - \\mathrm{CKA}`,
    absent when a layer is constant over the probe), ``min_rank`` and ``max_inactive`` (the rank and
    dead-unit readings) and ``constant_layers`` (how many are). Under DDP the
    weights are the same on every rank, so the monitor runs on global rank 0 only and logs from there.

    Parameters
    ----------
    layers
        At least 2 names from the ``LightningModule``'s ``named_modules()`` (e.g. ``["net.1", "net.3"]``).
    probe
        A fixed input batch of at least 3 rows.
    config
        :class:`~shiftlab.topology.LayerConfig` (state thresholds).
    prefix
        Prepended to every logged name.

    Examples
    --------
    >>> import torch
    >>> callback = LayerMonitorCallback(["net.1", "net.3"], torch.randn(16, 4))
    >>> callback.monitor.layers
    ('net.1', 'net.3')
    """

    def __init__(
        self,
        layers: Sequence[str],
        probe: torch.Tensor,
        *,
        config: LayerConfig | None = None,
        prefix: str = "layers/",
    ) -> None:
        super().__init__()
        if not isinstance(probe, torch.Tensor) or probe.ndim < 2 or probe.shape[0] < 3:
            raise ValueError("probe must be a tensor batch (n, ...) of at least 3 inputs")
        if not probe.is_floating_point() or not bool(torch.isfinite(probe).all()):
            raise ValueError("probe must be a finite floating-point tensor")
        self.monitor = LayerPHMonitor(layers, config)
        self.probe = probe
        self.prefix = prefix

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the layer names against the module before the first step."""
        names = {name for name, _ in pl_module.named_modules() if name}
        missing = [name for name in self.monitor.layers if name not in names]
        if missing:
            shown = ", ".join(sorted(names)[:30])
            raise ValueError(f"unknown layer(s) {missing}; valid layer names: {shown}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the layer geometry (rank 0) and log it."""
        if not trainer.is_global_zero:
            return
        step = self.monitor.update(pl_module, self.probe)
        values = {
            "state": float(LAYER_STATE_CODES[step.state]),
            "constant_layers": float(len(step.constant_layers)),
        }
        if step.mean_death is not None:
            values["mean_death"] = step.mean_death
        if step.min_rank is not None and step.max_inactive is not None:
            values["min_rank"], values["max_inactive"] = step.min_rank, step.max_inactive
        for name, value in values.items():
            # rank_zero_only: no collective (sync_dist only silences Lightning's per-epoch sync advice)
            pl_module.log(
                self.prefix + name, value, on_step=False, on_epoch=True, sync_dist=True, rank_zero_only=True
            )
