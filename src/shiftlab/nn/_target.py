"""A learnable monotone target distribution for the quantile-mapping layers."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as tnf

from shiftlab.functional.quantile import Target, knot_levels, target_quantiles


class MonotoneTarget(nn.Module):
    r"""Learnable target quantiles :math:`q_0 \le \dots \le q_{K-1}` at levels :math:`(k + 1/2)/K`.

    Parametrised as :math:`q_0 = a`, :math:`q_k = a + \sum_{j \le k} \operatorname{softplus}(d_j)`, so every
    value of the parameters gives a strictly increasing quantile function; :meth:`forward` returns the
    tensor that :func:`~shiftlab.functional.quantile.target_quantiles` interpolates.

    Parameters
    ----------
    n_knots
        K >= 2.
    init
        Target whose quantiles at the K levels are the starting point (a name, distribution or tensor).

    Examples
    --------
    >>> t = MonotoneTarget(4)
    >>> t().detach().round(decimals=3)
    tensor([-1.1500, -0.3190,  0.3190,  1.1500])
    """

    def __init__(self, n_knots: int = 64, init: Target = "gaussian") -> None:
        super().__init__()
        if isinstance(n_knots, bool) or not isinstance(n_knots, int) or n_knots < 2:
            raise ValueError(f"n_knots must be an int >= 2; got {n_knots!r}")
        q = target_quantiles(init, knot_levels(n_knots)).detach().to(torch.float32)
        steps = q[1:] - q[:-1]
        if bool((steps <= 0).any()):
            raise ValueError("init must have strictly increasing quantiles at the knot levels")
        self.anchor = nn.Parameter(q[:1].clone())
        self.raw_steps = nn.Parameter(steps + torch.log(-torch.expm1(-steps)))  # softplus^-1

    def forward(self) -> torch.Tensor:
        """The K target quantiles (differentiable in the parameters)."""
        steps = tnf.softplus(self.raw_steps)
        return torch.cat([self.anchor, self.anchor + torch.cumsum(steps, 0)])

    def extra_repr(self) -> str:
        return f"n_knots={self.raw_steps.shape[0] + 1}"
