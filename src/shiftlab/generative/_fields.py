r"""Particle displacement fields: what each particle is asked to do before the congestion cap.

- :func:`ot_displacement` (Section 2, and the virtual-target term of Section 3): barycentric map of the
  exact plan minus identity, :math:`v_i = T(x_i) - x_i`; beyond the exact size limit, its debiased
  entropic counterpart :math:`T_{\alpha\beta}(x_i) - T_{\alpha\alpha}(x_i)` (the entropic map alone
  shrinks towards local means by an amount of order blur; subtracting the self-map removes that bias to
  first order).
- :func:`entropy_ascent`: :math:`n\nabla_{x_i}\hat H(x)` for a sample-entropy estimate :math:`\hat H`, the
  anti-collapse term of Section 3 (a Wasserstein-gradient step on :math:`\hat H`).
"""

from __future__ import annotations

import torch

from shiftlab.functional.displacement import sinkhorn_displacement
from shiftlab.functional.transport import barycentric_map, exact_plan

__all__ = ["entropy_ascent", "ot_displacement", "use_exact_plan"]


def use_exact_plan(plan: str, n: int, m: int, exact_max_n: int) -> bool:
    """Whether the configured plan kind means an exact plan for an ``n x m`` problem."""
    if plan == "exact":
        return True
    if plan == "entropic":
        return False
    return max(n, m) <= exact_max_n


def ot_displacement(
    x: torch.Tensor, y: torch.Tensor, *, exact: bool, blur: float, sinkhorn_iters: int
) -> torch.Tensor:
    r""":math:`T(x_i) - x_i` for the optimal plan (``exact``), else the debiased entropic displacement.

    The entropic branch runs ``sinkhorn_iters`` iterations after annealing (a fixed budget: rows of the
    plan are exact, column marginals approximate).

    Examples
    --------
    >>> x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[1.5], [0.5]])
    >>> ot_displacement(x, y, exact=True, blur=0.1, sinkhorn_iters=50)
    tensor([[0.5000],
            [0.5000]])
    """
    with torch.no_grad():
        if exact:
            return barycentric_map(exact_plan(x, y), y.to(x.dtype)) - x
        return sinkhorn_displacement(x, y, blur=blur, strict=False, max_iter=sinkhorn_iters).to(x.dtype)


def entropy_ascent(x: torch.Tensor, kind: str, k: int) -> torch.Tensor:
    r"""Per-particle entropy gradient :math:`n\nabla_{x_i}\hat H` (data units per unit entropy).

    ``"knn"``: Kozachenko-Leonenko, :math:`\hat H = \frac{D}{n}\sum_i \log\rho_i + \mathrm{const}` with
    :math:`\rho_i` the distance to the ``k``-th nearest neighbour (neighbours chosen once, distances
    differentiated). ``"logdet"``: Gaussian entropy
    :math:`\hat H = \tfrac12\log\det\hat\Sigma + \mathrm{const}`,
    whose particle gradient is :math:`\hat\Sigma^{-1}(x_i - \bar x)`.

    Raises
    ------
    FloatingPointError
        If two particles coincide (``knn``) or the covariance is singular (``logdet``).

    Examples
    --------
    >>> g = entropy_ascent(torch.tensor([[0.0], [1.0], [3.0]]), "logdet", 1)
    >>> bool(g[0] < 0) and bool(g[2] > 0)
    True
    """
    n, dim = x.shape
    xr = x.detach().double().requires_grad_(True)
    if kind == "knn":
        if not 1 <= k < n:
            raise ValueError(f"knn_k must lie in [1, {n - 1}] for {n} particles; got {k}")
        with torch.no_grad():
            dist = torch.cdist(xr, xr)
            dist.fill_diagonal_(float("inf"))
            neighbour = dist.topk(k, dim=1, largest=False).indices[:, -1]
        rho = (xr - xr[neighbour]).norm(dim=1)
        if bool((rho == 0).any()):
            raise FloatingPointError(
                f"{int((rho == 0).sum())} particle(s) coincide with a neighbour; knn entropy is -inf"
            )
        h = dim / n * rho.log().sum()
    elif kind == "logdet":
        xc = xr - xr.mean(dim=0, keepdim=True)
        sign, logdet = torch.linalg.slogdet(xc.T @ xc / n)
        if float(sign.detach()) <= 0:
            raise FloatingPointError("particle covariance is singular; use entropy='knn' or 'none'")
        h = 0.5 * logdet
    else:
        raise ValueError(f"entropy must be one of 'knn', 'logdet'; got {kind!r}")
    (grad,) = torch.autograd.grad(h, xr)
    return (n * grad).to(x.dtype)
