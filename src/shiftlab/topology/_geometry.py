"""Class geometry: features from a named layer, per-class directions, cosine distances, their H0."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.topology import H0Diagram, h0_persistence

__all__ = [
    "GEOMETRY_MODES",
    "ClassGeometry",
    "GeometryMode",
    "class_distances",
    "class_geometry",
    "class_geometry_from_features",
    "extract_features",
]

GeometryMode = Literal["centroid", "samples"]
GEOMETRY_MODES: tuple[str, ...] = ("centroid", "samples")


@dataclass(frozen=True, eq=False)
class ClassGeometry:
    """Geometry of ``C`` classes in a feature space and its H0 persistence.

    Attributes
    ----------
    directions
        float64 ``(C, d)``: the mean feature of each class (``"centroid"``) or the mean unit-normalised
        feature (``"samples"``).
    distances
        float64 ``(C, C)``: cosine distances between classes (zero diagonal), see
        :func:`class_geometry_from_features`.
    spread
        float64 ``(C,)``: mean cosine distance between two distinct samples of the same class.
    counts
        int64 ``(C,)``: samples per class.
    diagram
        The H0 diagram of the ``C`` classes under ``distances``.
    mode
        ``"centroid"`` or ``"samples"``.
    """

    directions: torch.Tensor
    distances: torch.Tensor
    spread: torch.Tensor
    counts: torch.Tensor
    diagram: H0Diagram
    mode: str

    @property
    def h0(self) -> float:
        """H0 total persistence: the sum of the ``C - 1`` class merge distances (MST length)."""
        return self.diagram.total_persistence

    @property
    def n_classes(self) -> int:
        """Number of classes ``C``."""
        return int(self.counts.shape[0])


def class_geometry_from_features(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    n_classes: int | None = None,
    mode: GeometryMode = "centroid",
) -> ClassGeometry:
    r"""Per-class directions, cosine distances between classes and their H0 diagram.

    With :math:`f_i` the features of sample :math:`i`, :math:`u_i = f_i / \lVert f_i \rVert` and
    :math:`S_c` the samples of class :math:`c`:

    * ``"centroid"``: :math:`m_c = \frac{1}{|S_c|}\sum_{i \in S_c} f_i` and
      :math:`D_{ab} = 1 - \cos(m_a, m_b)`, the distance between class-mean directions;
    * ``"samples"``: :math:`\bar u_c = \frac{1}{|S_c|}\sum_{i \in S_c} u_i` and
      :math:`D_{ab} = 1 - \bar u_a^\top \bar u_b = \frac{1}{|S_a||S_b|}\sum_{i\in S_a, j \in S_b}
      (1 - u_i^\top u_j)`, the mean cosine distance between a sample of ``a`` and one of ``b``, so a
      diffuse class sits farther from every other class.

    In both modes ``spread[c]`` is the mean cosine distance between two distinct samples of class
    :math:`c`, :math:`\frac{|S_c|}{|S_c| - 1}(1 - \lVert \bar u_c\rVert^2)` (in ``"centroid"`` mode a
    zero feature vector, e.g. after a ReLU, counts as orthogonal to every sample). The H0 diagram is
    :func:`~shiftlab.functional.topology.h0_persistence` of ``D``; its total persistence is
    :attr:`ClassGeometry.h0`.

    Parameters
    ----------
    features
        ``(n, d)``, finite.
    labels
        ``(n,)`` integers in ``[0, C)``; every class needs at least 2 samples.
    n_classes
        ``C`` (default ``labels.max() + 1``); at least 2.
    mode
        ``"centroid"`` or ``"samples"``.

    Returns
    -------
    ClassGeometry

    Raises
    ------
    ValueError
        Shapes, non-finite features, labels out of range, a class with fewer than 2 samples, a zero
        class mean (``"centroid"``) or a zero feature vector (``"samples"``): cosine is undefined there.

    Examples
    --------
    >>> import torch
    >>> f = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0], [1.0, 1.0], [2.0, 2.1]])
    >>> g = class_geometry_from_features(f, torch.tensor([0, 0, 1, 1, 2, 2]))
    >>> g.n_classes, round(g.h0, 3)
    (3, 0.545)
    """
    if mode not in GEOMETRY_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(GEOMETRY_MODES)}")
    f = as_tensor(features, name="features", ndim=2, min_rows=2).to(torch.float64)
    y = _check_labels(labels, f.shape[0], n_classes)
    c = int(y.max()) + 1 if n_classes is None else n_classes
    counts = torch.bincount(y, minlength=c)
    if bool((counts < 2).any()):
        short = torch.nonzero(counts < 2).flatten().tolist()
        raise ValueError(f"every class needs at least 2 samples; classes {short} have fewer")
    norms = torch.linalg.vector_norm(f, dim=1)
    if mode == "samples" and bool((norms == 0).any()):
        raise ValueError(
            f"{int((norms == 0).sum())} feature vector(s) are zero: their cosine distance is undefined; "
            "use mode='centroid' or a layer without all-zero activations"
        )
    unit = f / norms.clamp(min=torch.finfo(torch.float64).tiny)[:, None]
    mean_unit = torch.zeros(c, f.shape[1], dtype=torch.float64, device=f.device)
    mean_unit.index_add_(0, y, unit)
    mean_unit /= counts[:, None]
    sq = (mean_unit * mean_unit).sum(dim=1)
    spread = _spread(unit, y, counts, sq)
    if mode == "centroid":
        directions = torch.zeros_like(mean_unit).index_add_(0, y, f) / counts[:, None]
    else:
        directions = mean_unit
    distances = class_distances(directions, mode)
    return ClassGeometry(
        directions=directions.cpu(),
        distances=distances.cpu(),
        spread=spread.cpu(),
        counts=counts.cpu(),
        diagram=h0_persistence(distances=distances.cpu()),
        mode=mode,
    )


def class_distances(directions: torch.Tensor, mode: GeometryMode) -> torch.Tensor:
    r"""Cosine distances between class directions, batched: ``(..., C, d)`` to ``(..., C, C)``.

    ``"centroid"`` (directions are class means :math:`m_c`):
    :math:`D_{ab} = 1 - m_a^\top m_b / (\lVert m_a\rVert \lVert m_b\rVert)`. ``"samples"`` (directions
    are mean unit vectors :math:`\bar u_c`): :math:`D_{ab} = 1 - \bar u_a^\top \bar u_b`. The result is
    symmetrised with a zero diagonal; negative round-off (both forms are nonnegative in exact
    arithmetic) is set to 0.

    Examples
    --------
    >>> import torch
    >>> class_distances(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "centroid")
    tensor([[0., 1.],
            [1., 0.]])
    """
    if mode not in GEOMETRY_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(GEOMETRY_MODES)}")
    if mode == "centroid":
        lengths = torch.linalg.vector_norm(directions, dim=-1, keepdim=True)
        if bool((lengths == 0).any()):
            zero = torch.nonzero(lengths.squeeze(-1) == 0)[:, -1].unique().tolist()
            raise ValueError(f"class mean feature is zero for classes {zero}; cosine is undefined there")
        hat = directions / lengths
        dist = 1 - hat @ hat.transpose(-1, -2)
    else:
        dist = 1 - directions @ directions.transpose(-1, -2)
    dist = 0.5 * (dist + dist.transpose(-1, -2))
    dist.diagonal(dim1=-2, dim2=-1).zero_()
    return dist.clamp(min=0.0)  # round-off only


def _spread(unit: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    r"""Mean within-class cosine distance over distinct pairs (a zero vector counts as orthogonal).

    :math:`\sum_{i \ne j} u_i^\top u_j = \lVert \sum_i u_i \rVert^2 - \#\{i: u_i \ne 0\}`.
    """
    n = counts.to(torch.float64)
    nonzero = torch.bincount(y[(unit != 0).any(dim=1)], minlength=counts.shape[0]).to(torch.float64)
    return 1 - (sq * n * n - nonzero) / (n * (n - 1))


def _check_labels(labels: ArrayLike, n: int, n_classes: int | None) -> torch.Tensor:
    raw = labels if isinstance(labels, torch.Tensor) else as_tensor(labels, name="labels", ndim=1)
    if raw.ndim != 1 or raw.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},); got {tuple(raw.shape)}")
    if raw.is_floating_point() and not bool((raw == raw.round()).all()):
        raise ValueError("labels must be integers")
    y = raw.to(torch.int64)
    if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int)):
        raise TypeError(f"n_classes must be an int; got {type(n_classes).__name__}")
    upper = int(y.max()) + 1 if n_classes is None else n_classes
    if upper < 2:
        raise ValueError(f"need at least 2 classes; got {upper}")
    if bool((y < 0).any()) or bool((y >= upper).any()):
        raise ValueError(f"labels must lie in [0, {upper}); got min {int(y.min())}, max {int(y.max())}")
    return y


def _resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        names = [name for name in modules if name]
        shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
        raise ValueError(f"unknown layer {layer!r}; valid layer names: {shown}")
    return modules[layer]


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def collect_features(
    model: nn.Module, batches: Iterable[Any], layer: str | None, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` (as is, in its current mode) over ``(x, y)`` batches; features of ``layer`` or logits.

    Callers that do not own ``model`` use :func:`extract_features`, which works on a copy.
    """
    dev = _model_device(model) if device is None else device
    captured: list[torch.Tensor] = []
    handle = None
    if layer is not None:

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {layer!r} returned {type(output).__name__}, not a tensor")
            captured.append(output.detach().flatten(start_dim=1).to(torch.float64).cpu())

        handle = _resolve_layer(model, layer).register_forward_hook(hook)
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for batch in batches:
                if not (isinstance(batch, tuple | list) and len(batch) >= 2):
                    raise TypeError("the loader must yield (inputs, labels) pairs")
                x, y = batch[0], batch[1]
                out = model(x.to(dev))
                if layer is None:
                    feats.append(out.detach().flatten(start_dim=1).to(torch.float64).cpu())
                else:
                    feats.append(captured.pop())
                labels.append(torch.as_tensor(y).to(torch.int64).cpu())
    finally:
        if handle is not None:
            handle.remove()
    if not feats:
        raise ValueError("the loader yielded no batches")
    return torch.cat(feats), torch.cat(labels)


def extract_features(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    layer: str | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a named layer (default: the model output) over a loader, on a copy of ``model``.

    The model is deep-copied and put in eval mode; the layer is resolved by name on the copy, so the
    caller's model (its mode, hooks and parameters) is never touched.

    Parameters
    ----------
    model
        Any ``nn.Module``.
    loader
        An iterable of ``(inputs, labels)`` batches (e.g. a ``DataLoader``).
    layer
        A name from ``model.named_modules()``; ``None`` for the output (logits).
    device
        Where to run (default: the model's device).

    Returns
    -------
    tuple of torch.Tensor
        ``features`` float64 ``(n, p)`` (each sample's layer output flattened) and ``labels`` int64
        ``(n,)``, on the CPU.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> batches = [(torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))]
    >>> f, y = extract_features(net, batches, layer="1")
    >>> tuple(f.shape), tuple(y.shape), net.training
    ((5, 3), (5,), True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    work = copy.deepcopy(model).eval()
    if layer is not None:
        _resolve_layer(work, layer)
    dev = None if device is None else torch.device(device)
    if dev is not None:
        work = work.to(dev)
    return collect_features(work, loader, layer, dev)


def class_geometry(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    layer: str | None = None,
    mode: GeometryMode = "centroid",
    n_classes: int | None = None,
    device: str | torch.device | None = None,
) -> ClassGeometry:
    """Class geometry of ``model``'s features at ``layer`` (logits by default) over ``loader``.

    :func:`extract_features` on a copy of the model, then :func:`class_geometry_from_features`.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> x, y = torch.randn(30, 4), torch.arange(30) % 3
    >>> g = class_geometry(net, [(x, y)])
    >>> tuple(g.distances.shape), g.diagram.deaths.shape[0]
    ((3, 3), 2)
    """
    if mode not in GEOMETRY_MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(GEOMETRY_MODES)}")
    features, labels = extract_features(model, loader, layer=layer, device=device)
    return class_geometry_from_features(features, labels, n_classes=n_classes, mode=mode)
