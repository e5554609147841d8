r"""Optimal transport between point clouds: squared distances, exact plans and W2, barycentric maps.

Entropic plans and Sinkhorn divergences are in :mod:`~shiftlab.functional.sinkhorn`, Sinkhorn
displacement fields in :mod:`~shiftlab.functional.displacement` and sliced W2 in
:mod:`~shiftlab.functional.sliced`; they build on the helpers here.

Conventions, used by every function here and in those modules:

- Point clouds are ``(n, d)`` tensors with optional probability weights (``None``: uniform). Weights must be
  non-negative and sum to 1; they are never renormalised for you.
- The ground cost is the squared Euclidean distance :math:`C_{ij} = \lVert x_i - y_j\rVert^2`, so every
  *cost* returned here is in squared data units and every *distance* (:func:`wasserstein2`,
  :func:`sliced_wasserstein2`) is in data units. In particular :func:`wasserstein2` returns
  :math:`W_2`, not :math:`W_2^2` and not geomloss' :math:`\tfrac12 W_2^2`.
- Entropic problems (:mod:`~shiftlab.functional.sinkhorn`) are parametrised by a *blur* length, as
  in geomloss; that module gives the exact correspondence.

POT (``import ot``) solves the exact problems; it is an optional dependency imported only inside the
functions that need it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from shiftlab.functional._checks import _check_int
from shiftlab.functional._convert import ArrayLike, as_tensor

__all__ = ["barycentric_map", "exact_plan", "squared_distances", "wasserstein2"]

_OT_EXTRA = "pip install 'shiftlab[ot]'"


def _import_pot() -> Any:
    try:
        import ot
    except ImportError as err:
        raise ImportError(
            f"exact optimal transport needs POT (`import ot`); install it with {_OT_EXTRA}"
        ) from err
    return ot


def _clouds(x: ArrayLike, y: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    xt = as_tensor(x, name="x", ndim=2, min_rows=1)
    yt = as_tensor(y, name="y", ndim=2, min_rows=1)
    if xt.shape[1] != yt.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got {xt.shape[1]} and {yt.shape[1]}")
    if xt.device != yt.device:
        raise ValueError(f"x and y must be on the same device; got {xt.device} and {yt.device}")
    dtype = torch.promote_types(xt.dtype, yt.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    return xt.to(dtype), yt.to(dtype)


def _weights(w: ArrayLike | None, n: int, name: str, like: torch.Tensor) -> torch.Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    t = as_tensor(w, name=name, ndim=1).to(dtype=like.dtype, device=like.device)
    if t.shape[0] != n:
        raise ValueError(f"{name} must have one weight per point ({n}); got {t.shape[0]}")
    if bool((t < 0).any()):
        raise ValueError(f"{name} must be non-negative")
    total = float(t.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1; got {total:.9g} (normalise it first)")
    return t


def squared_distances(x: ArrayLike, y: ArrayLike) -> torch.Tensor:
    r"""Matrix of squared Euclidean distances :math:`C_{ij} = \lVert x_i - y_j\rVert^2`.

    Computed as :math:`\lVert x_i\rVert^2 + \lVert y_j\rVert^2 - 2\langle x_i, y_j\rangle` (one matrix
    product, so it scales to large clouds on a GPU); entries made negative by round-off are set to 0.
    Differentiable in ``x`` and ``y``.

    Parameters
    ----------
    x, y
        Point clouds of shapes ``(n, d)`` and ``(m, d)``.

    Returns
    -------
    torch.Tensor
        ``(n, m)``, in squared data units.

    Examples
    --------
    >>> squared_distances([[0.0, 0.0]], [[3.0, 4.0], [0.0, 1.0]])
    tensor([[25.,  1.]], dtype=torch.float64)
    """
    xt, yt = _clouds(x, y)
    return _sqdist(xt, yt)


def _sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return d.clamp_min(0.0)


def _solve_emd(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, num_iter_max: int) -> tuple[Any, float]:
    ot = _import_pot()
    a64 = a.detach().cpu().double().numpy()
    b64 = b.detach().cpu().double().numpy()
    c64 = cost.detach().cpu().double().numpy()
    plan, log = ot.emd(a64, b64, c64, numItermax=num_iter_max, log=True)
    if log["warning"] is not None:
        raise RuntimeError(f"exact OT solver did not reach optimality: {log['warning']} (raise num_iter_max)")
    return plan, float(log["cost"])


def exact_plan(
    x: ArrayLike,
    y: ArrayLike,
    *,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    num_iter_max: int = 1_000_000,
) -> torch.Tensor:
    r"""Exact optimal transport plan for the squared Euclidean cost (POT's network simplex).

    .. math::

        \pi^\star = \operatorname*{arg\,min}_{\pi \ge 0,\ \pi\mathbf 1 = a,\ \pi^\top\mathbf 1 = b}
        \sum_{ij} \pi_{ij}\lVert x_i - y_j\rVert^2 .

    Solved in float64 on the CPU (cost :math:`O(n^3)` in the worst case: use it for ``n`` up to a few
    thousand, :func:`entropic_plan` beyond). With uniform weights and ``n == m`` the optimal plan is a
    permutation matrix divided by ``n``.

    Parameters
    ----------
    x, y
        Point clouds ``(n, d)`` and ``(m, d)``.
    a, b
        Probability weights of the points (``None``: uniform).
    num_iter_max
        Iteration budget of the network simplex; a ``RuntimeError`` is raised if it is exhausted.

    Returns
    -------
    torch.Tensor
        The plan ``(n, m)`` on ``x``'s device, in ``x``'s floating dtype.

    Raises
    ------
    ImportError
        If POT is not installed (``pip install 'shiftlab[ot]'``).

    Examples
    --------
    >>> exact_plan([[0.0], [1.0]], [[1.1], [0.1]])
    tensor([[0.0000, 0.5000],
            [0.5000, 0.0000]], dtype=torch.float64)
    """
    xt, yt = _clouds(x, y)
    num_iter_max = _check_int(num_iter_max, "num_iter_max", low=1)
    at = _weights(a, xt.shape[0], "a", xt)
    bt = _weights(b, yt.shape[0], "b", yt)
    plan, _ = _solve_emd(at, bt, _sqdist(xt.double(), yt.double()), num_iter_max)
    return torch.from_numpy(plan).to(device=xt.device, dtype=xt.dtype)


def wasserstein2(
    x: ArrayLike,
    y: ArrayLike,
    *,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    num_iter_max: int = 1_000_000,
) -> torch.Tensor:
    r"""Exact 2-Wasserstein distance between two weighted point clouds.

    .. math::

        W_2(\alpha, \beta) = \Bigl(\min_{\pi \in \Pi(a, b)} \sum_{ij}\pi_{ij}\lVert x_i - y_j\rVert^2
        \Bigr)^{1/2},

    the square root of POT's ``emd2`` on the squared-distance matrix. The result is a distance in data
    units (not :math:`W_2^2`, not :math:`\tfrac12 W_2^2`). Between two finite samples of the *same*
    distribution it is positive (the sampling floor), so compare it to that floor.

    Parameters
    ----------
    x, y
        Point clouds ``(n, d)`` and ``(m, d)``.
    a, b
        Probability weights (``None``: uniform).
    num_iter_max
        Iteration budget of the exact solver; a ``RuntimeError`` is raised if it is exhausted.

    Returns
    -------
    torch.Tensor
        0-d float64 tensor on ``x``'s device.

    Raises
    ------
    ImportError
        If POT is not installed (``pip install 'shiftlab[ot]'``).

    Examples
    --------
    >>> x = [[0.0, 0.0], [1.0, 0.0]]
    >>> float(wasserstein2(x, [[0.0, 3.0], [1.0, 3.0]]))
    3.0
    """
    xt, yt = _clouds(x, y)
    num_iter_max = _check_int(num_iter_max, "num_iter_max", low=1)
    at = _weights(a, xt.shape[0], "a", xt)
    bt = _weights(b, yt.shape[0], "b", yt)
    _, cost = _solve_emd(at, bt, _sqdist(xt.double(), yt.double()), num_iter_max)
    return torch.tensor(math.sqrt(max(cost, 0.0)), dtype=torch.float64, device=xt.device)


def barycentric_map(plan: ArrayLike, y: ArrayLike) -> torch.Tensor:
    r"""Barycentric projection of a transport plan: :math:`T(x_i) = \sum_j \pi_{ij} y_j / \sum_j \pi_{ij}`.

    For an exact plan between equal-size uniform clouds this is the matched target point; in general it
    is the conditional mean of the target given the source point.

    Parameters
    ----------
    plan
        ``(n, m)`` non-negative plan; every row must carry mass.
    y
        ``(m, d)`` target points.

    Returns
    -------
    torch.Tensor
        ``(n, d)``.

    Examples
    --------
    >>> barycentric_map([[0.25, 0.25], [0.0, 0.5]], [[0.0, 0.0], [2.0, 2.0]])
    tensor([[1., 1.],
            [2., 2.]], dtype=torch.float64)
    """
    p = as_tensor(plan, name="plan", ndim=2)
    yt = as_tensor(y, name="y", ndim=2).to(dtype=p.dtype, device=p.device)
    if p.shape[1] != yt.shape[0]:
        raise ValueError(f"plan has {p.shape[1]} columns but y has {yt.shape[0]} points")
    if bool((p < 0).any()):
        raise ValueError("plan must be non-negative")
    mass = p.sum(1, keepdim=True)
    if bool((mass <= 0).any()):
        raise ValueError(f"{int((mass <= 0).sum())} row(s) of plan carry no mass; T is undefined there")
    return (p @ yt) / mass
