"""Quantile-mapping layers: drop-in GroupNorm / InstanceNorm / LayerNorm that match a whole distribution.

- :class:`GroupMap`, :class:`InstanceMap`, :class:`LayerMap` — same arguments and affine shapes as
  ``nn.GroupNorm``, ``nn.InstanceNorm*d``, ``nn.LayerNorm``; each group of values is sent to a target
  distribution by mid-rank, with a documented backward surrogate, optional running quantile knots for a
  fixed eval map, and an optional blend with the matching norm.
- :class:`MonotoneTarget` — a learnable target distribution.

The math lives in :mod:`shiftlab.functional.quantile`.

Examples
--------
>>> import torch
>>> from shiftlab.nn import GroupMap
>>> GroupMap(4, 8, target="uniform")(torch.randn(2, 8, 3, 3)).shape
torch.Size([2, 8, 3, 3])
"""

from __future__ import annotations

from shiftlab.nn._layers import DEFAULT_GRAD, GroupMap, InstanceMap, LayerMap
from shiftlab.nn._target import MonotoneTarget

__all__ = ["DEFAULT_GRAD", "GroupMap", "InstanceMap", "LayerMap", "MonotoneTarget"]
