"""LayerPHMonitor: H0 over a network's layers from their CKA similarity, with collapse states."""

from __future__ import annotations

import copy
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.spectra import effective_rank_from_spectrum
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


def _gram_effective_rank(gram: torch.Tensor) -> float:
    """Effective rank of the singular values of X_c, from its Gram matrix (eigenvalues: their squares).

    Eigenvalues within round-off of zero (``m * eps * max``, as a numerical rank uses) are set to 0 before
    the square root, which would otherwise turn 1e-16 noise into 1e-8 singular values.
    """
    eigenvalues = torch.linalg.eigvalsh(gram)
    tol = gram.shape[0] * torch.finfo(gram.dtype).eps * float(eigenvalues.max())
    return float(effective_rank_from_spectrum(torch.where(eigenvalues > tol, eigenvalues, 0.0).sqrt()))


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
    r"""Thresholds of :class:`LayerPHMonitor`: three readings, each calibrated on real data.

    * **Redundancy** :math:`\bar d = \frac{1}{L - 1}\sum_k d_k`, the mean H0 death (merge height) of
      the :math:`L` layers under the CKA distance :math:`1 - \mathrm{CKA}`: 0 when every layer carries
      the same representation up to rotation and scale.
    * **Rank** :math:`r_{\min}`, the smallest effective rank (Roy & Vetterli, of the singular values of
      the centred probe representation) over every monitored layer but the last (the output, whose rank
      the number of classes bounds): about 1 when a layer passes on a single direction.
    * **Dead units** :math:`u_{\max}`, the largest share, over the same layers, of units (features, or
      channels of a feature map) that are never positive on the probe: dead after a ReLU.

    ``COLLAPSE`` when :math:`\bar d <` ``collapse``, :math:`r_{\min} <` ``rank_collapse``,
    :math:`u_{\max} \ge` ``inactive_collapse`` or a layer is constant over the probe (dead); else ``WATCH``
    when :math:`\bar d <` ``watch``, :math:`r_{\min} <` ``rank_watch`` or :math:`u_{\max} \ge`
    ``inactive_watch``; else ``HEALTHY``. In scalar mode only :math:`\bar d` is read, in the signal's units.

    Calibration (``OMP_NUM_THREADS=1 python examples/ph_layers.py``: 8 seeds, probe of 256 test images).
    *Healthy*: MLP, CNN and PureFieldNet on UCI digits and the MLP on MNIST-5k, Adam 1e-3, read after 1,
    3, 10 and 30 epochs (128 readings): :math:`\bar d \ge 0.0061` (MNIST-5k MLP: the layers of a healthy
    MLP already have linear CKA near 0.99), :math:`r_{\min} \ge 7.19` (PureFieldNet, whose first
    engine's 10 logits are not the last layer; MLP and CNN :math:`\ge 9.5`) and :math:`u_{\max} \le 0.47`
    (the CNN's conv channels; MLP :math:`\le 0.25`). *Planted* on the trained MLP (digits and MNIST-5k):
    identical layers :math:`\bar d \le 3 \cdot 10^{-15}`; a rank-1 bottleneck at fc1 or fc2
    :math:`r_{\min} = 1.00`; rank-2 and rank-3 bottlenecks 1.89-2.98; 90 % of fc1's and fc2's ReLUs dead
    :math:`u_{\max}` 0.898-0.930 (rank 9.4-13.4, as healthy nets); 98 % dead 0.980-0.992; all ReLUs dead:
    constant layers. :math:`\bar d` alone cannot see a bottleneck: a rank-1 fc1 reads 0.0033-0.0108,
    inside the healthy range, and a rank-1 fc2 or dead units *raise* it (0.03-0.50).

    The defaults: ``collapse`` 0.001 and ``watch`` 0.003 (half the healthy minimum: near-copies of
    layers only), ``rank_collapse`` 1.5 (one direction), ``rank_watch`` 4.5 (between rank 3 and the
    healthy 7.19), ``inactive_watch`` 0.7 (between the healthy 0.47 and the planted 0.90) and
    ``inactive_collapse`` 0.96 (between 0.93 and 0.98). With them all 128 healthy readings are
    ``HEALTHY``; identical layers, rank-1 bottlenecks at fc1 and at fc2, 98 % and all-dead ReLUs
    ``COLLAPSE`` (80 of 80); rank-2 and rank-3 bottlenecks and 90 % dead ReLUs ``WATCH`` (48 of 48).
    Trained at lr 1.0, the MLP and CNN die (``COLLAPSE``, 16 of 16) and PureFieldNet reaches 17 % accuracy
    with ``WATCH`` (7) or ``COLLAPSE`` (1).
    The states describe the layer geometry, not accuracy; the thresholds were measured on 8x8 and 28x28
    digits only.
    """

    watch: float = 0.003
    collapse: float = 0.001
    rank_watch: float = 4.5
    rank_collapse: float = 1.5
    inactive_watch: float = 0.7
    inactive_collapse: float = 0.96

    def __post_init__(self) -> None:
        for name in (
            "watch",
            "collapse",
            "rank_watch",
            "rank_collapse",
            "inactive_watch",
            "inactive_collapse",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a nonnegative number; got {value!r}")
        if self.collapse > self.watch:
            raise ValueError(f"collapse ({self.collapse}) must not exceed watch ({self.watch})")
        if self.rank_collapse > self.rank_watch:
            raise ValueError(
                f"rank_collapse ({self.rank_collapse}) must not exceed rank_watch ({self.rank_watch})"
            )
        if not self.inactive_watch <= self.inactive_collapse <= 1:
            raise ValueError(
                f"need inactive_watch ({self.inactive_watch}) <= inactive_collapse "
                f"({self.inactive_collapse}) <= 1"
            )

    def state(
        self, mean_death: float, min_rank: float | None = None, max_inactive: float | None = None
    ) -> LayerState:
        """The state for a mean death and (outside scalar mode) the smallest effective rank and the largest
        share of never-positive units.

        Examples
        --------
        >>> config = LayerConfig()
        >>> config.state(0.03, 12.0), config.state(0.03, 1.0), config.state(0.002, 12.0)
        (<LayerState.HEALTHY: 'HEALTHY'>, <LayerState.COLLAPSE: 'COLLAPSE'>, <LayerState.WATCH: 'WATCH'>)
        """
        rank = math.inf if min_rank is None else min_rank
        dead = 0.0 if max_inactive is None else max_inactive
        if mean_death < self.collapse or rank < self.rank_collapse or dead >= self.inactive_collapse:
            return LayerState.COLLAPSE
        if mean_death < self.watch or rank < self.rank_watch or dead >= self.inactive_watch:
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
        :math:`\\bar d`, the redundancy reading.
    state
        HEALTHY / WATCH / COLLAPSE.
    constant_layers
        Layers whose representation is constant over the probe: fully collapsed, CKA undefined. When
        any exists the state is ``COLLAPSE`` and ``similarity``/``diagram`` are ``None``.
    effective_ranks
        Effective rank of each layer's centred probe representation (0 for a constant layer; empty in
        scalar mode).
    min_rank
        The rank reading: the smallest of ``effective_ranks`` without the last layer (``None`` in scalar
        mode).
    inactive_fractions
        Per layer, the share of its units (features, or channels of a feature map) that are never positive
        on the probe: dead after a ReLU (empty in scalar mode).
    max_inactive
        The dead-unit reading: the largest of ``inactive_fractions`` without the last layer.
    """

    step: int
    layers: tuple[str, ...]
    similarity: torch.Tensor | None
    diagram: H0Diagram | None
    mean_death: float | None
    state: LayerState
    constant_layers: tuple[str, ...] = ()
    effective_ranks: tuple[float, ...] = ()
    min_rank: float | None = None
    inactive_fractions: tuple[float, ...] = ()
    max_inactive: float | None = None


class LayerPHMonitor:
    """Per-layer collapse monitor: H0 of the layers under the CKA distance, with states.

    :meth:`update` runs a fixed probe batch through a copy of the model, takes each named layer's output,
    forms the ``L x L`` linear-CKA matrix (:func:`linear_cka`), and reads the state from the mean H0
    death of ``1 - CKA`` and from the smallest effective rank of the layers before the last (see
    :class:`LayerConfig` for both readings and their calibration). List the layers in forward order,
    the output last. :meth:`update_scalars` is the scalar-signal mode: one number per layer, H0 on
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
        inactive: dict[str, float] = {}
        handles = []
        for name in self.layers:
            module = _resolve_layer(work, name)
            handles.append(module.register_forward_hook(_capture(outputs, inactive, name)))
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
                grams[name] = _centred_gram(outputs[name], name).cpu()
            except ValueError:
                constant.append(name)
        ranks = tuple(_gram_effective_rank(grams[name]) if name in grams else 0.0 for name in self.layers)
        min_rank = min(ranks[:-1])
        fractions = tuple(inactive[name] for name in self.layers)
        if constant:
            state = LayerState.COLLAPSE
            return self._record(None, None, None, state, tuple(constant), ranks, min_rank, fractions)
        n = len(self.layers)
        sim = torch.eye(n, dtype=torch.float64)
        for i in range(n):
            for j in range(i + 1, n):
                sim[i, j] = sim[j, i] = _cka_from_grams(grams[self.layers[i]], grams[self.layers[j]])
        diagram = h0_persistence(distances=1 - sim)
        mean = diagram.total_persistence / (n - 1)
        state = self.config.state(mean, min_rank, max(fractions[:-1]))
        return self._record(sim, diagram, mean, state, (), ranks, min_rank, fractions)

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
        ranks: tuple[float, ...] = (),
        min_rank: float | None = None,
        inactive: tuple[float, ...] = (),
    ) -> LayerStep:
        step = LayerStep(
            step=len(self.history),
            layers=self.layers,
            similarity=sim,
            diagram=diagram,
            mean_death=mean,
            state=state,
            constant_layers=constant,
            effective_ranks=ranks,
            min_rank=min_rank,
            inactive_fractions=inactive,
            max_inactive=max(inactive[:-1]) if inactive else None,
        )
        self.history.append(step)
        return step


def _capture(
    store: dict[str, torch.Tensor], inactive: dict[str, float], name: str
) -> Callable[[nn.Module, Any, Any], None]:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
        # a unit (feature, or channel of a feature map) that is never positive on the probe: dead after a ReLU
        positive = (output.detach() > 0).flatten(start_dim=2).any(dim=2) if output.ndim > 2 else output > 0
        inactive[name] = 1.0 - float(positive.any(dim=0).double().mean())
        # stays on the model's device: the (m, p) -> (m, m) Gram product is the costly step (p is 25,088
        # for the CNN's first layer on 28x28 images), and only the small Gram matrix moves to the CPU
        store[name] = output.detach().flatten(start_dim=1).to(torch.float64)

    return hook
