r"""Deploy metrics of a trained arm: drift along Σ and its complement, and the Jacobian sensitivity ratio.

With Σ's low-rank part :math:`F F^\top` (r columns, trace :math:`t = \lVert F \rVert_F^2`), the orthogonal
projector :math:`P_\perp = I - U U^\top` onto the complement of its range (:math:`U` an orthonormal basis,
:math:`d - r` dimensions) and :math:`h` the measured representation as a function of the site value
:math:`s(x)`:

* **drift along Σ**: :math:`\mathbb{E}_{x, z} \lVert h(s + F z) - h(s) \rVert^2`, :math:`z \sim N(0, I_r)`;
* **drift along the complement**: the same with :math:`n = \sqrt{t / (d - r)}\, P_\perp g`,
  :math:`g \sim N(0, I_d)`: a draw of **equal trace** spread over the complement;
* **sensitivity ratio** (per unit trace):

  .. math:: \rho = \sqrt{\frac{\mathbb{E}_x \operatorname{tr}(J F F^\top J^\top) / t}
                            {\mathbb{E}_x \operatorname{tr}(J P_\perp J^\top) / (d - r)}},

  the RMS gain of the model along Σ's directions over its RMS gain along the rest (1: no preference;
  below 1: the model is less sensitive along the nuisance). The numerator is exact (one JVP per column of
  F), the denominator a Hutchinson estimate with ``n_probes`` draws of :math:`P_\perp g`.

Drift uses finite displacements of Σ's own size (no linearisation); in the linear regime
drift along Σ / drift along the complement ≈ ρ².
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from shiftlab.functional.jacobian import jvp_energy
from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators_common import to_model
from shiftlab.pmh._layers import INPUT, OUTPUT, capture, check_site_names, eval_mode, replace_output

__all__ = ["Drift", "deploy_drift", "sensitivity_ratio"]


@dataclasses.dataclass(frozen=True)
class Drift:
    """Mean squared drift of the measured representation along Σ and along its complement."""

    along: float
    complement: float


def _forward(
    model: nn.Module, x: torch.Tensor, site: str, measure: str
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def run(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with capture(model, measure) as store:
            if site == INPUT:
                out = model(x + delta.reshape(x.shape))
            else:
                with replace_output(model, site, lambda value: value + delta.reshape(value.shape)):
                    out = model(x)
        measured = out if measure == OUTPUT else store["value"]
        return measured.reshape(measured.shape[0], -1), out

    return run


def _parts(estimate: NuisanceEstimate, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(F, U, complement scale²) in ``like``'s dtype/device, or ``None`` for a rank-0 estimate."""
    if not isinstance(estimate, NuisanceEstimate):
        raise TypeError(f"estimate must be a NuisanceEstimate; got {type(estimate).__name__}")
    if estimate.rank == 0:
        return None
    factor = estimate.factor.to(device=like.device, dtype=like.dtype)
    basis = estimate.basis().to(device=like.device, dtype=like.dtype)
    trace = float(estimate.factor.double().pow(2).sum())
    return factor, basis, trace / (estimate.dim - estimate.rank)


def _complement(g: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """P⊥ g for rows of g (…, d)."""
    return g - (g @ basis) @ basis.T


def _checked(model: nn.Module, x: torch.Tensor, estimate: NuisanceEstimate, measure: str) -> torch.Tensor:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0 or not x.is_floating_point():
        raise ValueError("x must be a non-empty floating-point batch of shape (n, ...)")
    check_site_names(model, estimate.site, measure)
    if estimate.site == INPUT and tuple(x.shape[1:]) != estimate.shape:
        raise ValueError(f"the estimate lives on inputs of shape {estimate.shape}; got {tuple(x.shape[1:])}")
    return to_model(x, model)


def deploy_drift(
    model: nn.Module,
    estimate: NuisanceEstimate,
    x: torch.Tensor,
    *,
    measure: str = OUTPUT,
    n_draws: int = 4,
    seed: int = 0,
    batch_size: int = 512,
) -> Drift:
    r"""Drift :math:`\mathbb{E}\lVert h(s+n) - h(s)\rVert^2` along Σ's low-rank part and along its complement.

    See the module notes for the two draws (equal trace). The model runs in eval mode without gradients
    (its mode is restored). A rank-0 (purely isotropic) estimate has no "along" part: both are NaN.

    Examples
    --------
    >>> f = torch.zeros(4, 1); f[0, 0] = 1.0
    >>> est = NuisanceEstimate(f, 0.0, torch.tensor([1.0, 0.0]), "input", (4,), "demo", {})
    >>> net = nn.Linear(4, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[0.0, 1.0, 1.0, 1.0]]))  # blind along e0
    >>> d = deploy_drift(net, est, torch.zeros(10, 4))
    >>> d.along, d.complement > 0
    (0.0, True)
    """
    x = _checked(model, x, estimate, measure)
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
        raise ValueError(f"n_draws must be an int >= 1; got {n_draws!r}")
    parts = _parts(estimate, x)
    if parts is None:
        return Drift(math.nan, math.nan)
    factor, basis, scale2 = parts
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        totals = [0.0, 0.0]
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                chunk = x[start : start + batch_size]
                run = _forward(model, chunk, estimate.site, measure)
                base, _ = run(torch.zeros(chunk.shape[0], estimate.dim, dtype=x.dtype, device=x.device))
                for _ in range(n_draws):
                    z = torch.randn(chunk.shape[0], estimate.rank, generator=generator, dtype=torch.float64)
                    g = torch.randn(chunk.shape[0], estimate.dim, generator=generator, dtype=torch.float64)
                    along = z.to(x) @ factor.T
                    other = math.sqrt(scale2) * _complement(g.to(x), basis)
                    for i, delta in enumerate((along, other)):
                        moved, _ = run(delta)
                        totals[i] += float((moved - base).double().pow(2).sum())
    n = x.shape[0] * n_draws
    return Drift(along=totals[0] / n, complement=totals[1] / n)


def sensitivity_ratio(
    model: nn.Module,
    estimate: NuisanceEstimate,
    x: torch.Tensor,
    *,
    measure: str = OUTPUT,
    n_probes: int = 16,
    seed: int = 0,
    batch_size: int = 512,
) -> float:
    r"""Per-unit-trace Jacobian gain along Σ over that along its complement (see the module notes).

    NaN for a rank-0 estimate, ``inf`` when the model is exactly constant along the complement.

    Examples
    --------
    >>> f = torch.zeros(4, 1); f[0, 0] = 3.0
    >>> est = NuisanceEstimate(f, 0.0, torch.tensor([9.0, 0.0]), "input", (4,), "demo", {})
    >>> net = nn.Linear(4, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.tensor([[2.0, 1.0, 1.0, 1.0]]))
    >>> round(sensitivity_ratio(net, est, torch.zeros(8, 4)), 1)  # gain 2 along e0, 1 elsewhere
    2.0
    """
    x = _checked(model, x, estimate, measure)
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an int >= 1; got {n_probes!r}")
    parts = _parts(estimate, x)
    if parts is None:
        return math.nan
    factor, basis, _ = parts
    generator = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        along = other = 0.0
        for start in range(0, x.shape[0], batch_size):
            chunk = x[start : start + batch_size]
            b = chunk.shape[0]
            run = _forward(model, chunk, estimate.site, measure)
            columns = factor.T.unsqueeze(1).expand(estimate.rank, b, estimate.dim)
            g = torch.randn(n_probes, b, estimate.dim, generator=generator, dtype=torch.float64).to(x)
            probes = _complement(g, basis)
            shape = (-1, *chunk.shape) if estimate.site == INPUT else (-1, b, estimate.dim)
            with torch.no_grad():
                ones = torch.ones(estimate.rank, dtype=x.dtype, device=x.device)
                along += float(jvp_energy(run, columns.reshape(shape), ones).energy.double().sum())
                weights = torch.full((n_probes,), 1.0 / n_probes, dtype=x.dtype, device=x.device)
                other += float(jvp_energy(run, probes.reshape(shape), weights).energy.double().sum())
    trace = float(estimate.factor.double().pow(2).sum())
    numerator = along / trace
    denominator = other / (estimate.dim - estimate.rank)
    if denominator == 0:
        return math.inf if numerator > 0 else math.nan
    return math.sqrt(numerator / denominator)
