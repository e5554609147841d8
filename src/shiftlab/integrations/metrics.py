r"""torchmetrics ``Metric``\ s: the H0 gap of class geometry and the Jacobian sensitivity along a nuisance.

Both keep only sum-reducible states (per-class sums and counts; energy sums and a sample count), so
torchmetrics' distributed sync (all-gather, then sum) gives exactly the state one process would have built
from all the data, whatever the split across ranks; ``compute()`` is then the single-process value up to
floating-point summation order. Each metric has functional twins (the math without state):

- :func:`class_sums` / :func:`h0_gap_from_sums` for :class:`H0Gap`;
- :func:`nuisance_energies` / :func:`sensitivity_from_energies` for :class:`NuisanceSensitivity`.

Needs ``pip install 'shiftlab[lightning]'`` (torchmetrics).

:class:`H0Gap` and its twins live in a private module (:mod:`._metrics_h0`), :class:`NuisanceSensitivity`
and its twins in another (:mod:`._metrics_sensitivity`); import them from here. A metric fed in two halves
and one fed everything agree, which is what makes the distributed sync exact:

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> f, y = torch.randn(40, 3, generator=g), torch.arange(40) % 4
>>> halves, whole = H0Gap(num_classes=4, num_features=3), H0Gap(num_classes=4, num_features=3)
>>> for part in (slice(0, 20), slice(20, 40)):
...     halves.update(f[part], y[part], split="train")
>>> whole.update(f, y, split="train")
>>> for metric in (halves, whole):
...     metric.update(f.flip(0), y.flip(0), split="val")
>>> torch.allclose(halves.compute(), whole.compute())
True
"""

from __future__ import annotations

from shiftlab.integrations._metrics_h0 import H0Gap, H0GapParts, class_sums, h0_gap_from_sums
from shiftlab.integrations._metrics_sensitivity import (
    NuisanceSensitivity,
    nuisance_energies,
    sensitivity_from_energies,
)

__all__ = [
    "H0Gap",
    "H0GapParts",
    "NuisanceSensitivity",
    "class_sums",
    "h0_gap_from_sums",
    "nuisance_energies",
    "sensitivity_from_energies",
]
