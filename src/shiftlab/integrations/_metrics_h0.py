r"""The H0 gap of class geometry as a torchmetrics ``Metric``, with its sum-reducible functional twins.

:func:`class_sums` turns a batch into per-class sums and counts, :func:`h0_gap_from_sums` the summed
statistics of both splits into H0 and their gap, and :class:`H0Gap` accumulates the statistics over
batches and (by torchmetrics' sum reduction) over processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch

from shiftlab.functional import as_tensor
from shiftlab.functional.topology import h0_total_persistence
from shiftlab.integrations._optional import require
from shiftlab.topology import GEOMETRY_MODES, GeometryMode, class_distances

if TYPE_CHECKING:
    import torchmetrics
else:
    torchmetrics = require("torchmetrics", "lightning")

__all__ = ["H0Gap", "H0GapParts", "class_sums", "h0_gap_from_sums"]

SPLITS: tuple[str, ...] = ("train", "val")


class H0GapParts(NamedTuple):
    """H0 total persistence of the train and validation class geometry and their gap (0-d float64)."""

    h0_train: torch.Tensor
    h0_val: torch.Tensor
    gap: torch.Tensor


def class_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, mode: GeometryMode = "centroid"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Sufficient statistics of the class directions: per-class sums and counts.

    :math:`S_c = \sum_{i: y_i = c} v_i` with :math:`v_i = f_i` (``"centroid"``) or
    :math:`v_i = f_i / \lVert f_i \rVert` (``"samples"``), and :math:`n_c = \#\{i: y_i = c\}`. The class
    directions of :func:`~shiftlab.topology.class_geometry_from_features` are :math:`S_c / n_c`; sums of
    these statistics over disjoint batches (or ranks) are the statistics of the union.

    Parameters
    ----------
    features
        ``(n, d)``, finite.
    labels
        ``(n,)`` integers in ``[0, num_classes)``.
    num_classes
        ``C >= 2``.
    mode
        ``"centroid"`` or ``"samples"`` (zero feature vectors are rejected there: cosine is undefined).

    Returns
    -------
    tuple of torch.Tensor
        ``sums`` float64 ``(C, d)`` and ``counts`` int64 ``(C,)``, on the features' device.

    Examples
    --------
    >>> import torch
    >>> f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    >>> sums, counts = class_sums(f, torch.tensor([0, 0, 1]), num_classes=2)
    >>> sums.tolist(), counts.tolist()
    ([[4.0, 0.0], [0.0, 2.0]], [2, 1])
    """
    if mode not in GEOMETRY_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(GEOMETRY_MODES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
    f = as_tensor(features, name="features", ndim=2).to(torch.float64)
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.shape[0] != f.shape[0]:
        raise ValueError(f"labels must be a tensor of shape ({f.shape[0]},)")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor; got {labels.dtype}")
    y = labels.to(device=f.device, dtype=torch.int64)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got min {int(y.min())}, max {int(y.max())}")
    if mode == "samples":
        norms = torch.linalg.vector_norm(f, dim=1)
        if bool((norms == 0).any()):
            raise ValueError("zero feature vectors: their cosine is undefined; use mode='centroid'")
        f = f / norms[:, None]
    sums = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, device=f.device).index_add_(0, y, f)
    return sums, torch.bincount(y, minlength=num_classes)


def h0_gap_from_sums(
    train_sums: torch.Tensor,
    train_counts: torch.Tensor,
    val_sums: torch.Tensor,
    val_counts: torch.Tensor,
    mode: GeometryMode = "centroid",
) -> H0GapParts:
    r"""H0 of both class geometries from their sufficient statistics, and the gap.

    With directions :math:`m_c = S_c / n_c`, the cosine distances
    :func:`~shiftlab.topology.class_distances` :math:`D_{ab}` and :math:`h_0 = \sum_k d_k` the H0 total
    persistence (the length of the minimum spanning tree of the ``C`` classes under ``D``, computed exactly
    by :func:`~shiftlab.functional.topology.h0_total_persistence`):
    ``gap`` :math:`= h_0^{tr} - h_0^{va}`, the same statistic as
    :class:`~shiftlab.topology.PHMonitor`'s gap (without its noise floor, which needs the samples).

    Raises
    ------
    ValueError
        Shapes differ, a class has no sample in one split, or (``"centroid"``) a class mean is zero.

    Examples
    --------
    >>> import torch
    >>> s = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    >>> n = torch.tensor([2, 2, 2])
    >>> parts = h0_gap_from_sums(s, n, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]]), n - 1)
    >>> round(float(parts.h0_train), 4), round(float(parts.gap), 4)
    (0.5858, -0.3197)
    """
    if mode not in GEOMETRY_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(GEOMETRY_MODES)}")
    if train_sums.ndim != 2 or train_sums.shape != val_sums.shape:
        raise ValueError(
            "train and validation sums must both be (C, d); "
            f"got {tuple(train_sums.shape)}, {tuple(val_sums.shape)}"
        )
    h0 = []
    for name, sums, counts in (("train", train_sums, train_counts), ("val", val_sums, val_counts)):
        if counts.shape != (sums.shape[0],):
            raise ValueError(f"{name} counts must have shape ({sums.shape[0]},); got {tuple(counts.shape)}")
        empty = torch.nonzero(counts < 1).flatten().tolist()
        if empty:
            raise ValueError(f"classes {empty} have no {name} samples; every class needs one in each split")
        directions = sums.to(torch.float64) / counts.to(torch.float64)[:, None]
        h0.append(h0_total_persistence(class_distances(directions, mode)))
    return H0GapParts(h0[0], h0[1], h0[0] - h0[1])


class H0Gap(torchmetrics.Metric):
    r"""H0 gap :math:`h_0^{tr} - h_0^{va}` of the class geometry, accumulated over batches and processes.

    ``update(features, labels, split="train" | "val")`` adds a batch to one side's per-class sums and counts
    (:func:`class_sums`); ``compute()`` returns the gap (:func:`h0_gap_from_sums`). States reduce by sum, so
    a metric synced over ranks computes what one process fed all the data computes. In either mode the
    result equals ``class_geometry_from_features(f_train, y_train, mode=mode).h0`` minus the same for the
    validation features. Call ``update``, not ``forward``: a single batch holds only one side.

    Parameters
    ----------
    num_classes
        ``C >= 2``; every class needs a sample on each side at ``compute()``.
    num_features
        Feature width ``d``.
    mode
        ``"centroid"`` or ``"samples"``.
    **kwargs
        torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Examples
    --------
    >>> import torch
    >>> metric = H0Gap(num_classes=2, num_features=2)
    >>> metric.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), split="train")
    >>> metric.update(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1]), split="val")
    >>> round(float(metric.compute()), 4)  # (1 - cos 90°) - (1 - cos 45°)
    0.7071
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False

    train_sum: torch.Tensor
    train_count: torch.Tensor
    val_sum: torch.Tensor
    val_count: torch.Tensor

    def __init__(
        self, num_classes: int, num_features: int, *, mode: GeometryMode = "centroid", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be an int >= 1; got {num_features!r}")
        if mode not in GEOMETRY_MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(GEOMETRY_MODES)}")
        self.num_classes = num_classes
        self.num_features = num_features
        self.mode: GeometryMode = mode
        for split in SPLITS:
            sums = torch.zeros(num_classes, num_features, dtype=torch.float64)
            self.add_state(f"{split}_sum", default=sums, dist_reduce_fx="sum")
            counts = torch.zeros(num_classes, dtype=torch.int64)
            self.add_state(f"{split}_count", default=counts, dist_reduce_fx="sum")

    def update(self, features: torch.Tensor, labels: torch.Tensor, split: Literal["train", "val"]) -> None:
        """Add a batch of ``(n, num_features)`` features and ``(n,)`` labels to the ``split`` side."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if (
            not isinstance(features, torch.Tensor)
            or features.ndim != 2
            or features.shape[1] != self.num_features
        ):
            raise ValueError(f"features must be a tensor of shape (n, {self.num_features})")
        sums, counts = class_sums(features, labels, self.num_classes, self.mode)
        if split == "train":
            self.train_sum += sums.to(self.train_sum.device)
            self.train_count += counts.to(self.train_count.device)
        else:
            self.val_sum += sums.to(self.val_sum.device)
            self.val_count += counts.to(self.val_count.device)

    def compute(self) -> torch.Tensor:
        """The gap ``h0_train - h0_val`` (0-d float64)."""
        return h0_gap_from_sums(self.train_sum, self.train_count, self.val_sum, self.val_count, self.mode).gap
