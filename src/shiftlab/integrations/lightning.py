r"""Lightning callbacks for the H0 monitors, and the PMH penalty inside a ``LightningModule``.

- :class:`PHMonitorCallback`: :class:`~shiftlab.topology.PHMonitor` after every training epoch on a fixed
  train probe and a validation set; logs H0 train / validation, their gap and the calibrated noise floor
  through the module's own logger (``pl_module.log``) and sets ``trainer.should_stop`` when the monitor's
  rule fires (``patience`` consecutive alerts).
- :class:`LayerMonitorCallback`: :class:`~shiftlab.topology.LayerPHMonitor` on a probe batch; logs the
  mean CKA merge height and the HEALTHY / WATCH / COLLAPSE state.
- :class:`PMHObjective`: the loss :math:`\mathrm{task}(f(x), y) + c\,P(x)` with the
  :class:`~shiftlab.pmh.PMHPenalty` :math:`P` and the :class:`~shiftlab.pmh.LossBudget` coefficient
  :math:`c`, for any ``training_step``; :class:`PMHLightningModule` is a complete module built on it.

Under a distributed strategy (DDP, on CPU with gloo or on GPUs with NCCL) every rank runs
:class:`PHMonitorCallback` on its share of the probes (rows ``rank, rank + W, ...``) and the features are
all-gathered back into the original order, so each rank holds all ranks' features, computes the same
geometry and null draws (same seed) and takes the same stop decision. :class:`LayerMonitorCallback`
runs on global rank 0 only and logs from there. Nothing here writes to a logger directly: every value
goes through ``pl_module.log``, so each metric reaches the trainer's logger(s) exactly once.

Needs ``pip install 'shiftlab[lightning]'``.

The callbacks live in a private module (:mod:`._lightning_monitor`), the objective and module in another
(:mod:`._lightning_pmh`); import them from here. A module trained with the penalty, its H0 monitored:

>>> import lightning.pytorch as pl
>>> import torch
>>> from torch import nn
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from shiftlab.pmh import NuisanceEstimate
>>> g = torch.Generator().manual_seed(0)
>>> x, y = torch.randn(48, 4, generator=g), torch.arange(48) % 2
>>> est = NuisanceEstimate(torch.eye(4)[:, :1], 0.0, torch.tensor([1.0, 0.0]), "input", (4,), "demo", {})
>>> module = PMHLightningModule(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), est)
>>> monitor = PHMonitorCallback((x[:24], y[:24]), (x[24:], y[24:]), layer="net.1")
>>> trainer = pl.Trainer(max_epochs=2, callbacks=[monitor], accelerator="cpu", logger=False,
...                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
>>> trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
>>> len(monitor.monitor.history), sorted(k for k in trainer.callback_metrics if k.startswith("pmh/"))
(2, ['pmh/penalty', 'pmh/ratio', 'pmh/task_loss'])
"""

from __future__ import annotations

from shiftlab.integrations._lightning_monitor import (
    LAYER_STATE_CODES,
    LayerMonitorCallback,
    PHMonitorCallback,
)
from shiftlab.integrations._lightning_pmh import DEFAULT_BUDGET, PMHLightningModule, PMHObjective

__all__ = [
    "DEFAULT_BUDGET",
    "LAYER_STATE_CODES",
    "LayerMonitorCallback",
    "PHMonitorCallback",
    "PMHLightningModule",
    "PMHObjective",
]
