"""LayerPHMonitor: H0 over a network's layers from their CKA similarity, with collapse states."""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.topology import H0Diagram, h0_persistence
from shiftlab.topology._geometry import _model_device, _resolve_layer

__all__ = ["LayerConfig", "LayerPHMonitor", "LayerState", "LayerStep", "linear_cka", "scalar_h0"]


def linear_cka(x: ArrayLike, y: ArrayLike) -> torch.Tensor:
    r"""Linear centred kernel alignment between two representations of the same ``m`` inputs.

    With Gram matrices :math:`K = XX^\top`, :math:`L = YY^\top` and :math:`H = I - \frac1m \mathbf 1
    \mathbf 1^\top`,

    .. math:: \operatorname{CKA}(X, Y) = \frac{\langle HKH, HLH\rangle_F}
              {\lVert HKH\rVert_F\,\lVert HLH\rVert_F}
              = \frac{\lVert Y_c^\top X_c\rVert_F^2}{\lVert X_c^\top X_c\rVert_F\,\lVert Y_c^\top Y_c\rVert_F}

    (Kornblith et al. 2019), in ``[0, 1]``; invariant to orthogonal transforms and isotropic scaling of
    either representation, and 1 for representations that differ only by those.

    Parameters
    ----------
    x, y
        ``(m, p)`` and ``(m, q)`` (more dimensions are flattened after the first), ``m >= 2``.

    Returns
    -------
    torch.Tensor
        0-d float64.

    Raises
    ------
    ValueError
        Different ``m``, non-finite values, or a representation constant over the ``m`` inputs (CKA is
        0/0 there).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(20, 5, generator=g, dtype=torch.float64)
    >>> q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    >>> round(float(linear_cka(x, 3 * x @ q)), 12)
    1.0
    """
    tx = as_tensor(x, name="x", min_rows=2).to(torch.float64)
    ty = as_tensor(y, name="y", min_rows=2).to(torch.float64)
    if tx.ndim < 2 or ty.ndim < 2:
        raise ValueError("x and y must have shape (m, ...) with at least 2 dimensions")
    if tx.shape[0] != ty.shape[0]:
        raise ValueError(f"x and y must describe the same inputs; got {tx.shape[0]} and {ty.shape[0]} rows")
    kx, ky = _centred_gram(tx.flatten(1), "x"), _centred_gram(ty.flatten(1), "y")
    return _cka_from_grams(kx, ky)


def _centred_gram(features: torch.Tensor, name: str) -> torch.Tensor:
    centred = features - features.mean(dim=0, keepdim=True)
    gram = centred @ centred.T
    if float(torch.linalg.matrix_norm(gram)) == 0.0:
        raise ValueError(f"{name} is constant over the inputs: CKA is undefined (0/0)")
    return gram


def _cka_from_grams(kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    num = (kx * ky).sum()
    return (num / (torch.linalg.matrix_norm(kx) * torch.linalg.matrix_norm(ky))).clamp(0.0, 1.0)


def scalar_h0(values: ArrayLike) -> H0Diagram:
    r"""H0 of scalars (one number per layer): a spread statistic, nothing more.

    For points on a line the minimum spanning tree joins neighbours in sorted order, so the deaths are
    the gaps :math:`v_{(k+1)} - v_{(k)}` between sorted values and the total persistence is exactly
    :math:`\max v - \min v`, the range. This is the "layer H0" of a per-layer scalar signal (a norm, a
    loss, a rank): it measures spread, not shape.

    Examples
    --------
    >>> diagram = scalar_h0([3.0, 1.0, 10.0, 2.0])
    >>> diagram.deaths, diagram.total_persistence
    (tensor([1., 1., 7.], dtype=torch.float64), 9.0)
    """
    v = as_tensor(values, name="values", ndim=1, min_rows=2)
    return h0_persistence(v[:, None])


class LayerState(str, enum.Enum):
    """Collapse state of a network's layer geometry."""

    HEALTHY = "HEALTHY"
    WATCH = "WATCH"
    COLLAPSE = "COLLAPSE"


@dataclass(frozen=True)
class LayerConfig:
    """Thresholds of :class:`LayerPHMonitor` on the mean H0 death (mean CKA-distance merge height).

    The statistic is :math:`\\bar d = \\frac{1}{L - 1}\\sum_k d_k`, the mean merge height of the layers
    under the CKA distance :math:`1 - \\mathrm{CKA}`: 0 when every layer carries the same representation
    up to rotation and scale. ``COLLAPSE`` below ``collapse``, ``WATCH`` below ``watch``, else
    ``HEALTHY``; a layer that is constant over the probe (dead) is always ``COLLAPSE``.

    The states flag *redundancy between layers*, not accuracy. Measured with
    ``python examples/ph_layers.py`` (digits, 10 epochs, Adam 1e-3): :math:`\\bar d` is about 0.22 at
    initialisation and 0.02 (MLP), 0.07 (CNN), 0.04 (PureFieldNet) after healthy training; at lr 1.0 the
    MLP and CNN die (constant layers, ``COLLAPSE``) while a failed PureFieldNet (13 % accuracy) still
    reads 0.17. The defaults (``collapse`` 0.005, i.e. layers joined at CKA above 0.995 on average;
    ``watch`` 0.015) sit below the healthy values; in scalar mode the thresholds are in the signal's units.
    """

    watch: float = 0.015
    collapse: float = 0.005

    def __post_init__(self) -> None:
        for name in ("watch", "collapse"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a nonnegative number; got {value!r}")
        if self.collapse > self.watch:
            raise ValueError(f"collapse ({self.collapse}) must not exceed watch ({self.watch})")

    def state(self, mean_death: float) -> LayerState:
        """The state for a mean death."""
        if mean_death < self.collapse:
            return LayerState.COLLAPSE
        if mean_death < self.watch:
            return LayerState.WATCH
        return LayerState.HEALTHY


@dataclass(frozen=True, eq=False)
class LayerStep:
    """One :class:`LayerPHMonitor` update.

    Attributes
    ----------
    step
        0-based update index.
    layers
        Layer names, in the order of the matrices.
    similarity
        ``(L, L)`` linear CKA between layers (``None`` in scalar mode).
    diagram
        H0 over the layers under ``1 - CKA`` (or of the scalars).
    mean_death
        :math:`\\bar d`, the statistic the state is read from.
    state
        HEALTHY / WATCH / COLLAPSE.
    constant_layers
        Layers whose representation is constant over the probe: fully collapsed, CKA undefined. When
        any exists the state is ``COLLAPSE`` and ``similarity``/``diagram`` are ``None``.
    """

    step: int
    layers: tuple[str, ...]
    similarity: torch.Tensor | None
    diagram: H0Diagram | None
    mean_death: float | None
    state: LayerState
    constant_layers: tuple[str, ...] = ()


class LayerPHMonitor:
    """Per-layer collapse monitor: H0 of the layers under the CKA distance, with states.

    :meth:`update` runs a fixed probe batch through a copy of the model, takes each named layer's output,
    forms the ``L x L`` linear-CKA matrix (:func:`linear_cka`), and reads the state from the mean H0
    death of ``1 - CKA``. :meth:`update_scalars` is the scalar-signal mode: one number per layer, H0 on
    the line (:func:`scalar_h0`), i.e. the spread of the values.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> monitor = LayerPHMonitor(["0", "2", "4"])
    >>> step = monitor.update(net, torch.randn(64, 8))
    >>> step.layers, step.diagram.deaths.shape[0], step.state in LayerState
    (('0', '2', '4'), 2, True)
    """

    def __init__(self, layers: Sequence[str], config: LayerConfig | None = None) -> None:
        names = tuple(layers)
        if isinstance(layers, str) or len(names) < 2:
            raise ValueError("LayerPHMonitor needs a sequence of at least 2 layer names")
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be distinct; got {list(names)}")
        self.layers = names
        self.config = LayerConfig() if config is None else config
        self.history: list[LayerStep] = []

    def update(self, model: nn.Module, probe: torch.Tensor) -> LayerStep:
        """Record the layer geometry of ``model`` on the ``probe`` inputs (the model is not modified)."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not isinstance(probe, torch.Tensor) or probe.ndim < 2 or probe.shape[0] < 3:
            raise ValueError("probe must be a tensor batch of at least 3 inputs")
        work = copy.deepcopy(model).eval()
        outputs: dict[str, torch.Tensor] = {}
        handles = []
        for name in self.layers:
            module = _resolve_layer(work, name)
            handles.append(module.register_forward_hook(_capture(outputs, name)))
        try:
            with torch.no_grad():
                work(probe.to(_model_device(work)))
        finally:
            for handle in handles:
                handle.remove()
        grams: dict[str, torch.Tensor] = {}
        constant: list[str] = []
        for name in self.layers:
            try:
                grams[name] = _centred_gram(outputs[name], name)
            except ValueError:
                constant.append(name)
        if constant:
            return self._record(None, None, None, LayerState.COLLAPSE, tuple(constant))
        n = len(self.layers)
        sim = torch.eye(n, dtype=torch.float64)
        for i in range(n):
            for j in range(i + 1, n):
                sim[i, j] = sim[j, i] = _cka_from_grams(grams[self.layers[i]], grams[self.layers[j]])
        diagram = h0_persistence(distances=1 - sim)
        mean = diagram.total_persistence / (n - 1)
        return self._record(sim, diagram, mean, self.config.state(mean), ())

    def update_scalars(self, values: Mapping[str, float]) -> LayerStep:
        """Scalar-signal mode: H0 of one number per layer (a spread statistic, see :func:`scalar_h0`)."""
        missing = [name for name in self.layers if name not in values]
        if missing:
            raise ValueError(f"values lacks layers {missing}; expected one value for each of {self.layers}")
        diagram = scalar_h0([float(values[name]) for name in self.layers])
        mean = diagram.total_persistence / (len(self.layers) - 1)
        return self._record(None, diagram, mean, self.config.state(mean), ())

    def _record(
        self,
        sim: torch.Tensor | None,
        diagram: H0Diagram | None,
        mean: float | None,
        state: LayerState,
        constant: tuple[str, ...],
    ) -> LayerStep:
        step = LayerStep(
            step=len(self.history),
            layers=self.layers,
            similarity=sim,
            diagram=diagram,
            mean_death=mean,
            state=state,
            constant_layers=constant,
        )
        self.history.append(step)
        return step


def _capture(store: dict[str, torch.Tensor], name: str) -> Callable[[nn.Module, Any, Any], None]:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
        store[name] = output.detach().flatten(start_dim=1).to(torch.float64).cpu()

    return hook
