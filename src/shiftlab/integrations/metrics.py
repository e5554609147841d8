r"""torchmetrics ``Metric``\ s: the H0 gap of class geometry and the Jacobian sensitivity along a nuisance.

Both keep only sum-reducible states (per-class sums and counts; energy sums and a sample count), so
torchmetrics' distributed sync (all-gather, then sum) gives exactly the state one process would have built
from all the data, whatever the split across ranks; ``compute()`` is then the single-process value up to
floating-point summation order. Each metric has functional twins (the math without state):

- :func:`class_sums` / :func:`h0_gap_from_sums` for :class:`H0Gap`;
- :func:`nuisance_energies` / :func:`sensitivity_from_energies` for :class:`NuisanceSensitivity`.

Needs ``pip install 'shiftlab[lightning]'`` (torchmetrics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from torch import nn

from shiftlab.functional import as_tensor
from shiftlab.functional.topology import h0_total_persistence
from shiftlab.integrations._optional import require
from shiftlab.pmh import NuisanceEstimate
from shiftlab.topology import GEOMETRY_MODES, GeometryMode, class_distances

if TYPE_CHECKING:
    import torchmetrics
else:
    torchmetrics = require("torchmetrics", "lightning")

__all__ = [
    "H0Gap",
    "H0GapParts",
    "NuisanceSensitivity",
    "class_sums",
    "h0_gap_from_sums",
    "nuisance_energies",
    "sensitivity_from_energies",
]

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


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    modules.pop("", None)
    if name not in modules:
        valid = ", ".join(repr(n) for n in list(modules)[:30]) or "(the model has no sub-modules)"
        raise ValueError(f"unknown layer {name!r}; valid names: {valid}")
    return modules[name]


def _check_points(model: nn.Module, site: str, measure: str) -> None:
    """The measured layer must be computed from the site: a known name, registered after the site."""
    if measure != "output":
        _module(model, measure)
    if site == "input":
        return
    _module(model, site)
    names = [n for n, _ in model.named_modules()]
    if site == measure or (measure != "output" and names.index(measure) < names.index(site)):
        raise ValueError(
            f"measure {measure!r} must be 'output' or a layer registered after the site {site!r}"
        )


def _hook(store: dict[str, torch.Tensor], key: str, leaf: bool) -> Callable[[nn.Module, Any, Any], Any]:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer for {key!r} returned {type(output).__name__}, not a tensor")
        if leaf:  # the site becomes the leaf we differentiate with respect to
            output = output.detach().requires_grad_(True)
        store[key] = output
        return output if leaf else None

    return hook


def nuisance_energies(
    model: nn.Module, estimate: NuisanceEstimate, x: torch.Tensor, *, measure: str = "output"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Exact per-sample Jacobian energies along Σ's factor and along the complement of its range.

    With :math:`J_b = \partial h(x_b) / \partial s(x_b)` (site :math:`s` = the estimate's site, :math:`h` the
    measured representation, flattened to :math:`M` values), the factor :math:`F` (``d x r``), an
    orthonormal basis :math:`U` of its range and :math:`P_\perp = I - UU^\top`:

    .. math:: a_b = \lVert J_b F \rVert_F^2 = \sum_k \lVert J_b f_k \rVert^2, \qquad
              c_b = \lVert J_b P_\perp \rVert_F^2 = \operatorname{tr}(J_b P_\perp J_b^\top).

    Both come from the rows :math:`g_{bm} = J_b^\top e_m` (one backward pass per measured coordinate,
    :math:`M` in all): :math:`a_b = \sum_m \lVert F^\top g_{bm}\rVert^2`,
    :math:`c_b = \sum_m \lVert g_{bm} - U U^\top g_{bm}\rVert^2`. No probes: the result is deterministic,
    and :func:`~shiftlab.pmh.sensitivity_ratio` (a Hutchinson estimate of :math:`c`) converges to it. The
    model runs in eval mode (restored afterwards) so that rows do not interact; it is not otherwise touched.

    Parameters
    ----------
    model
        Any ``nn.Module``; the estimate's site must be ``"input"`` or one of its layers.
    estimate
        :class:`~shiftlab.pmh.NuisanceEstimate` with rank ``1 <= r < d``.
    x
        ``(B, ...)`` inputs (for an input site, each of the estimate's shape).
    measure
        ``"output"`` or a layer registered after the site.

    Returns
    -------
    tuple of torch.Tensor
        ``along`` and ``complement``, float64 ``(B,)``.

    Examples
    --------
    >>> import torch
    >>> from shiftlab.pmh import NuisanceEstimate
    >>> f = 2 * torch.eye(3)[:, :1]  # Σ = 4 e0 e0ᵀ
    >>> est = NuisanceEstimate(f, 0.0, torch.tensor([4.0, 0.0]), "input", (3,), "demo", {})
    >>> net = torch.nn.Linear(3, 1, bias=False)
    >>> _ = net.weight.data.copy_(torch.tensor([[1.0, 3.0, 0.0]]))
    >>> along, complement = nuisance_energies(net, est, torch.zeros(2, 3))
    >>> along.tolist(), complement.tolist()  # ‖J f‖² = (2·1)², ‖J P⊥‖² = 3²
    ([4.0, 4.0], [9.0, 9.0])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(estimate, NuisanceEstimate):
        raise TypeError(f"estimate must be a NuisanceEstimate; got {type(estimate).__name__}")
    if not 1 <= estimate.rank < estimate.dim:
        raise ValueError(f"the estimate needs rank 1 <= r < d={estimate.dim}; got r={estimate.rank}")
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise ValueError("x must be a non-empty floating-point batch of shape (B, ...)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    if estimate.site == "input" and tuple(x.shape[1:]) != estimate.shape:
        raise ValueError(f"the estimate lives on inputs of shape {estimate.shape}; got {tuple(x.shape[1:])}")
    if not isinstance(measure, str):
        raise TypeError(f"measure must be a str; got {type(measure).__name__}")
    _check_points(model, estimate.site, measure)
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "nuisance_energies needs autograd: call it outside torch.inference_mode() "
            "(in Lightning: Trainer(inference_mode=False))"
        )
    store: dict[str, torch.Tensor] = {}
    handles = []
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            if estimate.site == "input":
                store["site"] = x.detach().clone().requires_grad_(True)
            else:
                handles.append(
                    _module(model, estimate.site).register_forward_hook(_hook(store, "site", True))
                )
            if measure != "output":
                handles.append(_module(model, measure).register_forward_hook(_hook(store, "measure", False)))
            out = model(store["site"] if estimate.site == "input" else x)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the model returned {type(out).__name__}, not a tensor")
            h = (out if measure == "output" else store["measure"]).reshape(x.shape[0], -1)
            site = store["site"]
            if site.shape[0] != x.shape[0] or math.prod(site.shape[1:]) != estimate.dim:
                raise ValueError(
                    f"the site {estimate.site!r} has shape {tuple(site.shape[1:])}; "
                    f"the estimate lives on {estimate.shape}"
                )
            factor = estimate.factor.to(device=site.device, dtype=torch.float64)
            basis = estimate.basis().to(device=site.device, dtype=torch.float64)
            along = torch.zeros(x.shape[0], dtype=torch.float64, device=site.device)
            complement = torch.zeros_like(along)
            for m in range(h.shape[1]):
                (row,) = torch.autograd.grad(h[:, m].sum(), site, retain_graph=m + 1 < h.shape[1])
                g = row.reshape(x.shape[0], -1).to(torch.float64)
                along += (g @ factor).pow(2).sum(dim=1)
                complement += (g - (g @ basis) @ basis.T).pow(2).sum(dim=1)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return along, complement


def sensitivity_from_energies(
    along: torch.Tensor, complement: torch.Tensor, estimate: NuisanceEstimate
) -> torch.Tensor:
    r"""Per-unit-trace gain along Σ over that along its complement, from summed energies.

    .. math:: \rho = \sqrt{\frac{\sum_b a_b / t}{\sum_b c_b / (d - r)}}, \qquad t = \lVert F\rVert_F^2,

    the quantity of :func:`~shiftlab.pmh.sensitivity_ratio` (1: no preference; below 1: less sensitive
    along the nuisance). ``inf`` when the complement energy is exactly zero and the along energy is not,
    NaN when both are.

    Examples
    --------
    >>> import torch
    >>> from shiftlab.pmh import NuisanceEstimate
    >>> f = 2 * torch.eye(3)[:, :1]  # Σ = 4 e0 e0ᵀ
    >>> est = NuisanceEstimate(f, 0.0, torch.tensor([4.0, 0.0]), "input", (3,), "demo", {})
    >>> float(sensitivity_from_energies(torch.tensor(8.0), torch.tensor(18.0), est))  # sqrt((8/4) / (18/2))
    0.4714045207910317
    """
    if not 1 <= estimate.rank < estimate.dim:
        raise ValueError(f"the estimate needs rank 1 <= r < d={estimate.dim}; got r={estimate.rank}")
    a = along.to(torch.float64).sum()
    c = complement.to(torch.float64).sum()
    if bool(a < 0) or bool(c < 0) or not (bool(torch.isfinite(a)) and bool(torch.isfinite(c))):
        raise ValueError(f"energies must be finite and nonnegative; got {float(a)}, {float(c)}")
    trace = float(estimate.factor.double().pow(2).sum())
    numerator = a / trace
    denominator = c / (estimate.dim - estimate.rank)
    if float(denominator) == 0:
        return torch.tensor(math.inf if float(numerator) > 0 else math.nan, dtype=torch.float64)
    return torch.sqrt(numerator / denominator)


class NuisanceSensitivity(torchmetrics.Metric):
    r"""Jacobian sensitivity ratio along a :class:`~shiftlab.pmh.NuisanceEstimate`, over batches and ranks.

    ``update(model, x)`` adds the exact per-sample energies along Σ's factor and along the complement of
    its range (:func:`nuisance_energies`) to two running sums; ``compute()`` returns
    :func:`sensitivity_from_energies` of the totals. Sum-reduced states: the synced value over ranks is
    the value of one process fed all the batches. Each update costs one backward pass per measured
    coordinate (``M``: the logits, or the measured layer's width) and needs autograd, so it cannot run
    under ``torch.inference_mode()`` (Lightning validation: ``Trainer(inference_mode=False)``).

    Parameters
    ----------
    estimate
        Σ with rank ``1 <= r < d``; its site says where the Jacobian is taken.
    measure
        ``"output"`` or a layer registered after the site.
    **kwargs
        torchmetrics ``Metric`` options.

    Examples
    --------
    >>> import torch
    >>> from shiftlab.pmh import NuisanceEstimate
    >>> f = 2 * torch.eye(3)[:, :1]  # Σ = 4 e0 e0ᵀ
    >>> est = NuisanceEstimate(f, 0.0, torch.tensor([4.0, 0.0]), "input", (3,), "demo", {})
    >>> net = torch.nn.Linear(3, 1, bias=False)
    >>> _ = net.weight.data.copy_(torch.tensor([[1.0, 3.0, 0.0]]))
    >>> metric = NuisanceSensitivity(est)
    >>> metric.update(net, torch.zeros(4, 3))
    >>> round(float(metric.compute()), 4)  # gain 1 along e0, RMS gain 3/sqrt(2) on the complement
    0.4714
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    along: torch.Tensor
    complement: torch.Tensor
    total: torch.Tensor

    def __init__(self, estimate: NuisanceEstimate, *, measure: str = "output", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(estimate, NuisanceEstimate):
            raise TypeError(f"estimate must be a NuisanceEstimate; got {type(estimate).__name__}")
        if not 1 <= estimate.rank < estimate.dim:
            raise ValueError(f"the estimate needs rank 1 <= r < d={estimate.dim}; got r={estimate.rank}")
        if not isinstance(measure, str):
            raise TypeError(f"measure must be a str; got {type(measure).__name__}")
        self.estimate = estimate
        self.measure = measure
        self.add_state("along", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("complement", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, model: nn.Module, x: torch.Tensor) -> None:
        """Add the energies of ``model`` on the batch ``x``."""
        along, complement = nuisance_energies(model, self.estimate, x, measure=self.measure)
        self.along += along.sum().to(self.along.device)
        self.complement += complement.sum().to(self.complement.device)
        self.total += x.shape[0]

    def compute(self) -> torch.Tensor:
        """The sensitivity ratio ρ (0-d float64)."""
        if int(self.total) == 0:
            raise ValueError("NuisanceSensitivity.compute() before any update: no samples")
        return sensitivity_from_energies(self.along, self.complement, self.estimate)
