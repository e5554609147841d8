"""PHMonitor: H0 of train vs validation class geometry, with a calibrated alert and a k-consecutive stop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from shiftlab.functional._checks import _check_int, _check_open_unit
from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.topology import h0_total_persistence
from shiftlab.topology._geometry import (
    GEOMETRY_MODES,
    ClassGeometry,
    GeometryMode,
    _check_labels,
    class_distances,
    class_geometry_from_features,
)

__all__ = ["MonitorConfig", "MonitorStep", "PHMonitor", "consecutive_alert_stop", "split_null_gaps"]

#: Null draws evaluated at once; bounds the (draws, n, d) gather in :func:`split_null_gaps`.
_DRAWS_PER_CHUNK = 16


def consecutive_alert_stop(alerts: Sequence[bool], patience: int) -> int | None:
    """Index of the first epoch that completes ``patience`` consecutive alerts, or ``None``.

    The stop rule is exactly: stop at the first ``t`` with ``alerts[t - k + 1], ..., alerts[t]`` all true
    (``k = patience``). An epoch without an alert resets the count.

    Examples
    --------
    >>> consecutive_alert_stop([True, False, True, True, True, False], patience=3)
    4
    >>> consecutive_alert_stop([True, True, False, True, True], patience=3) is None
    True
    """
    k = _check_int(patience, "patience", low=1)
    run = 0
    for t, alert in enumerate(alerts):
        if not isinstance(alert, bool):
            raise TypeError(f"alerts must be bools; got {type(alert).__name__} at index {t}")
        run = run + 1 if alert else 0
        if run >= k:
            return t
    return None


def _pooled(
    train_features: ArrayLike, train_labels: ArrayLike, val_features: ArrayLike, val_labels: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, int]:
    ft = as_tensor(train_features, name="train_features", ndim=2, min_rows=2).to(torch.float64)
    fv = as_tensor(val_features, name="val_features", ndim=2, min_rows=2).to(torch.float64)
    if ft.shape[1] != fv.shape[1]:
        raise ValueError(
            f"train and validation features must have the same width; got {ft.shape[1]} and {fv.shape[1]}"
        )
    yt = _check_labels(train_labels, ft.shape[0], None)
    yv = _check_labels(val_labels, fv.shape[0], None)
    return torch.cat([ft.cpu(), fv.cpu()]), torch.cat([yt.cpu(), yv.cpu()]), ft.shape[0]


def split_null_gaps(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    val_features: ArrayLike,
    val_labels: ArrayLike,
    *,
    n_null: int = 199,
    mode: GeometryMode = "centroid",
    seed: int | torch.Generator = 0,
) -> torch.Tensor:
    r"""Null distribution of the H0 gap: random re-splits of the pooled train + validation features.

    Under the null "train and validation features come from one distribution", the labelled features of
    both sets are exchangeable within each class. Each draw pools them, splits every class :math:`c` at
    random into parts of the original sizes :math:`n^{tr}_c` and :math:`n^{va}_c` (with equal-size sets
    this is a split-half of the pooled data), and records
    :math:`h_0(\text{part 1}) - h_0(\text{part 2})`, :math:`h_0` being
    :attr:`~shiftlab.topology.ClassGeometry.h0` of :func:`class_geometry_from_features`.

    Parameters
    ----------
    train_features, val_features
        ``(n_train, d)`` and ``(n_val, d)``.
    train_labels, val_labels
        Integer labels; every class needs 2 samples in each set.
    n_null
        Number of draws ``B``.
    mode
        Geometry mode, as in :func:`class_geometry_from_features`.
    seed
        An int or a CPU :class:`torch.Generator`.

    Returns
    -------
    torch.Tensor
        float64 ``(B,)`` null gaps.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> f = torch.randn(120, 5, generator=g) + 3 * torch.eye(5)[torch.arange(120) % 5]
    >>> y = torch.arange(120) % 5
    >>> null = split_null_gaps(f[:60], y[:60], f[60:], y[60:], n_null=99, seed=0)
    >>> tuple(null.shape), bool(null.abs().max() < 1)
    ((99,), True)
    """
    if mode not in GEOMETRY_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(GEOMETRY_MODES)}")
    n_null = _check_int(n_null, "n_null", low=1)
    features, labels, n_train = _pooled(train_features, train_labels, val_features, val_labels)
    n_classes = int(labels.max()) + 1
    train_counts = torch.bincount(labels[:n_train], minlength=n_classes)
    counts = torch.bincount(labels, minlength=n_classes)
    val_counts = counts - train_counts
    if bool((train_counts < 2).any()) or bool((val_counts < 2).any()):
        raise ValueError("every class needs at least 2 samples in both the train and the validation set")
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    if mode == "samples":
        norms = torch.linalg.vector_norm(features, dim=1)
        if bool((norms == 0).any()):
            raise ValueError("zero feature vectors: cosine is undefined; use mode='centroid'")
        features = features / norms[:, None]
    n = labels.shape[0]
    block_start = torch.cumsum(counts, 0) - counts
    out = []
    for start in range(0, n_null, _DRAWS_PER_CHUNK):
        b = min(_DRAWS_PER_CHUNK, n_null - start)
        keys = labels[None, :].to(torch.float64) * 2 + torch.rand(b, n, generator=gen, dtype=torch.float64)
        order = torch.argsort(keys, dim=1)  # grouped by class, random inside each class
        sorted_labels = labels[order]
        in_first = (torch.arange(n)[None, :] - block_start[sorted_labels]) < train_counts[sorted_labels]
        group = sorted_labels + n_classes * (~in_first).to(torch.int64)  # class c, part p -> p * C + c
        flat = (torch.arange(b)[:, None] * 2 * n_classes + group).flatten()
        sums = torch.zeros(b * 2 * n_classes, features.shape[1], dtype=torch.float64)
        sums.index_add_(0, flat, features[order].reshape(-1, features.shape[1]))
        sizes = torch.cat([train_counts, val_counts]).to(torch.float64)
        means = sums.reshape(b, 2, n_classes, -1) / sizes.reshape(1, 2, n_classes, 1)
        h0 = h0_total_persistence(class_distances(means, mode))
        out.append(h0[:, 0] - h0[:, 1])
    return torch.cat(out)


@dataclass(frozen=True)
class MonitorConfig:
    """Settings of :class:`PHMonitor`.

    Attributes
    ----------
    alpha
        Level of each epoch's test (default 0.05): on two samples of one distribution an epoch alerts with
        probability at most ``alpha``.
    patience
        ``k``: stop after ``k`` consecutive alerts (default 3, the original project's count; with
        independent epochs a false stop then has probability about ``alpha ** k``).
    n_null
        Null draws per epoch (default 199: ``alpha * (n_null + 1)`` is an integer for ``alpha`` = 0.05 or
        0.01); at least ``1 / alpha - 1`` so that an alert is possible.
    mode
        Geometry mode (``"centroid"`` or ``"samples"``).
    seed
        Seed of the null draws (epoch ``t`` uses ``seed + t``).
    """

    alpha: float = 0.05
    patience: int = 3
    n_null: int = 199
    mode: GeometryMode = "centroid"
    seed: int = 0

    def __post_init__(self) -> None:
        level = _check_open_unit(self.alpha, "alpha")
        _check_int(self.patience, "patience", low=1)
        _check_int(self.n_null, "n_null", low=1)
        _check_int(self.seed, "seed", low=0)
        if self.mode not in GEOMETRY_MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid modes: {', '.join(GEOMETRY_MODES)}")
        if math.floor(level * (self.n_null + 1) + 1e-9) < 1:
            raise ValueError(
                f"n_null={self.n_null} cannot reach level alpha={self.alpha}: "
                f"use n_null >= {math.ceil(1 / level) - 1}"
            )


@dataclass(frozen=True)
class MonitorStep:
    """One :meth:`PHMonitor.update`.

    Attributes
    ----------
    epoch
        0-based update index.
    h0_train, h0_val
        H0 total persistence of the train and validation class geometry.
    gap
        ``h0_train - h0_val``.
    noise_floor
        The alert threshold: an alert is raised exactly when ``|gap| > noise_floor``. It is the
        ``m``-th largest absolute null gap with ``m = floor(alpha (B + 1))``, which makes the alert the
        permutation test ``p_value <= alpha``.
    null_mean_abs
        Mean absolute null gap (the typical sampling noise).
    p_value
        :math:`(1 + \\#\\{|g_b| \\ge |gap|\\}) / (1 + B)`.
    alert
        ``|gap| > noise_floor``.
    consecutive
        Alerts in a row ending at this epoch.
    stop
        ``consecutive >= patience``.
    """

    epoch: int
    h0_train: float
    h0_val: float
    gap: float
    noise_floor: float
    null_mean_abs: float
    p_value: float
    alert: bool
    consecutive: int
    stop: bool


class PHMonitor:
    """Overfitting monitor: H0 of the train vs validation class geometry, calibrated per epoch.

    Each :meth:`update` computes both class geometries, the gap of their H0 total persistence and its
    split null (:func:`split_null_gaps`), alerts when the gap leaves the noise floor, and signals a stop
    after ``patience`` consecutive alerts (:func:`consecutive_alert_stop`). Train features should come
    from a fixed probe of training samples the size of the validation set, so that the null is a
    split-half of equal parts.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.arange(100) % 4
    >>> monitor = PHMonitor(MonitorConfig(patience=2))
    >>> for epoch in range(3):
    ...     f = torch.randn(200, 4, generator=g) + 4 * torch.eye(4)[torch.cat([y, y])]
    ...     step = monitor.update(f[:100], y, f[100:], y)
    >>> len(monitor.history), monitor.should_stop
    (3, False)
    """

    def __init__(self, config: MonitorConfig | None = None) -> None:
        self.config = MonitorConfig() if config is None else config
        self.history: list[MonitorStep] = []
        self.geometries: list[tuple[ClassGeometry, ClassGeometry]] = []

    @property
    def should_stop(self) -> bool:
        """Whether the stop rule has fired at some update."""
        return any(step.stop for step in self.history)

    def update(
        self,
        train_features: ArrayLike,
        train_labels: ArrayLike,
        val_features: ArrayLike,
        val_labels: ArrayLike,
    ) -> MonitorStep:
        """Record one epoch and return its :class:`MonitorStep`."""
        cfg = self.config
        epoch = len(self.history)
        null = split_null_gaps(
            train_features,
            train_labels,
            val_features,
            val_labels,
            n_null=cfg.n_null,
            mode=cfg.mode,
            seed=cfg.seed + epoch,
        )
        train = class_geometry_from_features(train_features, train_labels, mode=cfg.mode)
        val = class_geometry_from_features(val_features, val_labels, mode=cfg.mode)
        gap = train.h0 - val.h0
        sorted_abs = torch.sort(null.abs(), descending=True).values
        m = math.floor(cfg.alpha * (cfg.n_null + 1) + 1e-9)
        floor = float(sorted_abs[m - 1])
        p_value = (1 + int((null.abs() >= abs(gap)).sum())) / (1 + cfg.n_null)
        alert = abs(gap) > floor
        consecutive = (self.history[-1].consecutive + 1 if self.history else 1) if alert else 0
        step = MonitorStep(
            epoch=epoch,
            h0_train=train.h0,
            h0_val=val.h0,
            gap=gap,
            noise_floor=floor,
            null_mean_abs=float(null.abs().mean()),
            p_value=p_value,
            alert=alert,
            consecutive=consecutive,
            stop=consecutive >= cfg.patience,
        )
        self.history.append(step)
        self.geometries.append((train, val))
        return step
