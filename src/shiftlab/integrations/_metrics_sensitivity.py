r"""Jacobian sensitivity along a nuisance as a torchmetrics ``Metric``, with its functional twins.

:func:`nuisance_energies` gives the exact per-sample Jacobian energies along Σ's factor and along the
complement of its range, :func:`sensitivity_from_energies` the ratio from their sums, and
:class:`NuisanceSensitivity` accumulates the sums over batches and (by sum reduction) over processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from shiftlab.integrations._optional import require
from shiftlab.pmh import NuisanceEstimate
from shiftlab.pmh._layers import eval_mode

if TYPE_CHECKING:
    import torchmetrics
else:
    torchmetrics = require("torchmetrics", "lightning")

__all__ = ["NuisanceSensitivity", "nuisance_energies", "sensitivity_from_energies"]


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
    try:
        with eval_mode(model), torch.enable_grad():
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
