r"""Hugging Face bridge: the PMH penalty inside ``transformers.Trainer`` and the PH monitor as a callback.

* :class:`PMHHFTrainer` (or :class:`PMHTrainerMixin` on any ``Trainer`` subclass) adds
  :math:`c \cdot \mathbb{E}_x \operatorname{tr}(J \Sigma' J^\top)` to the task loss, with the perturbation
  site a named hidden layer of the transformer (``"bert.embeddings"``, ``"bert.encoder.layer.2"``) and the
  model's logits measured; task loss, penalty and applied ratio go through the Trainer's own ``log``.
* :class:`PHMonitorCallback` runs :class:`~shiftlab.topology.PHMonitor` on a train probe against the
  validation set at each epoch end and sets ``control.should_training_stop`` when its stop rule fires.
* :func:`text_style_estimate` is the D7 ``style`` estimator on pairs of texts (same content, other style) at
  a hidden layer; :func:`lift_to_tokens` spreads such a per-token estimate over a sequence.

Needs the ``hf`` extra (``transformers`` and ``accelerate``); tested with transformers 5.24.

The pieces live in private modules (:mod:`._hf_features`, :mod:`._hf_text`, :mod:`._hf_monitor`,
:mod:`._hf_penalty`); import them from here. :class:`PMHTrainerMixin` goes in front of any ``Trainer``
subclass, exactly as :class:`PMHHFTrainer` puts it in front of ``Trainer``:

>>> from transformers import Trainer
>>> PMHHFTrainer.__mro__[1:3] == (PMHTrainerMixin, Trainer)
True
"""

from __future__ import annotations

from shiftlab.integrations._optional import require

require("transformers", "hf")

# the private modules come after the check, so a missing extra fails with its install line
from shiftlab.integrations._hf_features import hidden_features  # noqa: E402
from shiftlab.integrations._hf_monitor import PHMonitorCallback  # noqa: E402
from shiftlab.integrations._hf_penalty import HFPenaltyConfig, PMHHFTrainer, PMHTrainerMixin  # noqa: E402
from shiftlab.integrations._hf_text import lift_to_tokens, text_style_estimate  # noqa: E402

__all__ = [
    "HFPenaltyConfig",
    "PHMonitorCallback",
    "PMHHFTrainer",
    "PMHTrainerMixin",
    "hidden_features",
    "lift_to_tokens",
    "text_style_estimate",
]
