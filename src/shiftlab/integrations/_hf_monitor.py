r"""The PH overfitting monitor as a ``transformers`` ``TrainerCallback`` that can stop training.

:class:`PHMonitorCallback` runs :class:`~shiftlab.topology.PHMonitor` on token-pooled features
(:func:`~shiftlab.integrations._hf_features.pooled_features`) of a train probe and the validation set at
each epoch end and sets ``control.should_training_stop`` when the monitor's stop rule fires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from shiftlab.integrations._optional import require

require("transformers", "hf")

from transformers import (  # noqa: E402 - after the check that names the extra
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    default_data_collator,
)

from shiftlab.integrations._hf_features import Batch, layer_by_name, pooled_features  # noqa: E402
from shiftlab.topology import MonitorStep, PHMonitor  # noqa: E402

__all__ = ["PHMonitorCallback"]


def _labels(data: Sequence[Batch], key: str, name: str) -> torch.Tensor:
    if not isinstance(data, Sequence) or len(data) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of examples (dicts)")
    try:
        labels = torch.tensor([int(torch.as_tensor(item[key])) for item in data])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"every example of {name} needs an integer label under {key!r}") from error
    return labels


class PHMonitorCallback(TrainerCallback):
    """Epoch-end H0 overfitting monitor (:class:`~shiftlab.topology.PHMonitor`) that can stop training.

    At each epoch end the class geometry of a fixed probe of training examples and of the validation
    examples is computed from the model's features (the logits, or a named layer mean-pooled over tokens,
    see :func:`hidden_features`); the monitor compares their H0 against its split null and, when its rule
    fires (``patience`` consecutive alerts), the callback sets ``control.should_training_stop``. The
    model is run in eval mode without gradients and its flags are restored. H0 of both sets, the gap, the
    noise floor, the p-value and the alert go into the next training log of a :class:`PMHTrainerMixin`
    trainer (``ph_*``; the callback asks for a log at every epoch end); ``history`` holds every
    :class:`~shiftlab.topology.MonitorStep` with any Trainer.

    Parameters
    ----------
    probe, validation
        Examples (dicts of model inputs plus an integer label under ``label_key``); every class needs at
        least 2 examples in each. The probe should be training examples, about as many as ``validation``.
    monitor
        A :class:`~shiftlab.topology.PHMonitor` (default: its default config: α = 0.05, patience 3).
    layer
        Layer whose (token-mean) output is the feature; ``None`` for the output ``output_key``.
    batch_size, collate_fn
        How examples are batched (default ``transformers.default_data_collator``).

    Examples
    --------
    >>> data = [{"input_ids": torch.tensor([2, i % 5 + 3]), "labels": i % 2} for i in range(8)]
    >>> callback = PHMonitorCallback(data[:4], data[4:])
    >>> callback.history, callback.stopped_at_epoch
    ([], None)
    """

    def __init__(
        self,
        probe: Sequence[Batch],
        validation: Sequence[Batch],
        *,
        monitor: PHMonitor | None = None,
        layer: str | None = None,
        batch_size: int = 32,
        collate_fn: Callable[[list[Any]], Batch] | None = None,
        label_key: str = "labels",
        output_key: str = "logits",
    ) -> None:
        counts = [
            torch.bincount(_labels(d, label_key, n))
            for d, n in ((probe, "probe"), (validation, "validation"))
        ]
        if counts[0].shape != counts[1].shape or bool((counts[0] != 0).ne(counts[1] != 0).any()):
            raise ValueError("probe and validation must hold the same classes")
        present = counts[0] > 0
        if int(present.sum()) < 2 or bool((counts[0][present] < 2).any() | (counts[1][present] < 2).any()):
            raise ValueError(
                "need at least 2 classes, each with at least 2 examples in probe and in validation"
            )
        if monitor is not None and not isinstance(monitor, PHMonitor):
            raise TypeError(f"monitor must be a PHMonitor; got {type(monitor).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
        self.probe = probe
        self.validation = validation
        self.monitor = PHMonitor() if monitor is None else monitor
        self.layer = layer
        self.batch_size = batch_size
        self.collate_fn = default_data_collator if collate_fn is None else collate_fn
        self.label_key = label_key
        self.output_key = output_key
        self.stopped_at_epoch: int | None = None
        self._pending: dict[str, float] = {}

    @property
    def history(self) -> list[MonitorStep]:
        """The monitor's steps, one per epoch end."""
        return self.monitor.history

    def pop_logs(self) -> dict[str, float]:
        """The latest epoch's values not yet logged (empty after the first call)."""
        pending, self._pending = self._pending, {}
        return pending

    def _batches(self, data: Sequence[Batch]) -> Iterator[Batch]:
        for start in range(0, len(data), self.batch_size):
            yield self.collate_fn([data[i] for i in range(start, min(start + self.batch_size, len(data)))])

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model = kwargs.get("model")
        if self.layer is not None and isinstance(model, nn.Module):
            layer_by_name(model, self.layer)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        model = kwargs.get("model")
        if not isinstance(model, nn.Module):
            raise TypeError("the Trainer passed no model to the callback")
        ft, yt = pooled_features(
            model, self._batches(self.probe), self.layer, self.output_key, self.label_key
        )
        fv, yv = pooled_features(
            model, self._batches(self.validation), self.layer, self.output_key, self.label_key
        )
        if yt is None or yv is None:
            raise ValueError(
                f"the collated batches carry no {self.label_key!r}: keep the labels in collate_fn"
            )
        step = self.monitor.update(ft, yt, fv, yv)
        self._pending = {
            "ph_h0_train": step.h0_train,
            "ph_h0_val": step.h0_val,
            "ph_gap": step.gap,
            "ph_noise_floor": step.noise_floor,
            "ph_p_value": step.p_value,
            "ph_alert": float(step.alert),
        }
        control.should_log = True
        if step.stop:
            control.should_training_stop = True
            self.stopped_at_epoch = step.epoch
        return control
