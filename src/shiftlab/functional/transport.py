r"""Optimal transport between point clouds: exact plans and W2, entropic plans, Sinkhorn divergences,
sliced W2 and barycentric maps.

Conventions, used by every function here:

- Point clouds are ``(n, d)`` tensors with optional probability weights (``None``: uniform). Weights must be
  non-negative and sum to 1; they are never renormalised for you.
- The ground cost is the squared Euclidean distance :math:`C_{ij} = \lVert x_i - y_j\rVert^2`, so every
  *cost* returned here is in squared data units and every *distance* (:func:`wasserstein2`,
  :func:`sliced_wasserstein2`) is in data units. In particular :func:`wasserstein2` returns
  :math:`W_2`, not :math:`W_2^2` and not geomloss' :math:`\tfrac12 W_2^2`.
- Entropic problems are parametrised by a *blur* length :math:`b` (as in geomloss) with
  :math:`\varepsilon = 2 b^2`; with our cost this makes every entropic value exactly twice geomloss'
  ``SamplesLoss("sinkhorn", p=2, blur=b)`` (whose cost is :math:`\tfrac12\lVert x-y\rVert^2`).

POT (``import ot``) solves the exact problems; it is an optional dependency imported only inside the
functions that need it. The entropic solvers are plain torch on the input's device, computed in float64
(log-domain Sinkhorn in float32 stalls at marginal errors near 1e-3 for small blur) and returned in the
input's floating dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch

from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.linalg import _check_int

__all__ = [
    "EntropicOT",
    "barycentric_map",
    "entropic_plan",
    "exact_plan",
    "multi_sinkhorn_displacement",
    "sinkhorn_displacement",
    "sinkhorn_divergence",
    "sliced_wasserstein2",
    "squared_distances",
    "wasserstein2",
]

_OT_EXTRA = "pip install 'shiftlab[ot]'"


def _import_pot() -> Any:
    try:
        import ot
    except ImportError as err:
        raise ImportError(
            f"exact optimal transport needs POT (`import ot`); install it with {_OT_EXTRA}"
        ) from err
    return ot


def _import_geomloss() -> Any:
    try:
        import geomloss
    except ImportError as err:
        raise ImportError(f"backend='geomloss' needs geomloss; install it with {_OT_EXTRA}") from err
    return geomloss


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


def _check_blur(blur: float) -> float:
    if isinstance(blur, bool) or not isinstance(blur, int | float) or not math.isfinite(blur) or blur <= 0:
        raise ValueError(f"blur must be a positive finite length; got {blur!r}")
    return float(blur)


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


class EntropicOT(NamedTuple):
    """Result of :func:`entropic_plan`.

    Attributes
    ----------
    plan : torch.Tensor
        ``(n, m)`` entropic plan.
    f, g : torch.Tensor
        Dual potentials ``(n,)`` and ``(m,)`` (squared data units).
    value : torch.Tensor
        0-d, :math:`\\mathrm{OT}_\\varepsilon = \\langle a, f\\rangle + \\langle b, g\\rangle`.
    n_iter : int
        Sinkhorn iterations at the final :math:`\\varepsilon` (after the annealing levels).
    marginal_error : float
        :math:`\\lVert \\pi^\\top\\mathbf 1 - b\\rVert_1` at exit (rows are exact).
    """

    plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    value: torch.Tensor
    n_iter: int
    marginal_error: float


def _softmin(eps: float, cost: torch.Tensor, log_w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """:math:`-\\varepsilon \\log \\sum_j \\exp(\\log w_j + (h_j - C_{ij})/\\varepsilon)` for every row i."""
    return -eps * torch.logsumexp(log_w[None, :] + (h[None, :] - cost) / eps, dim=1)


def _eps_levels(cost: torch.Tensor, eps: float, scaling: float) -> list[float]:
    top = max(float(cost.max()), eps)
    n_levels = math.ceil(math.log(top / eps) / -math.log(scaling)) if top > eps else 0
    return [top * scaling**k for k in range(n_levels)] + [eps]


def _sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    scaling: float,
    max_iter: int,
    tol: float,
    strict: bool = True,
) -> EntropicOT:
    r"""Alternating log-domain updates; each iteration ends with the f-update, so rows are exact and the
    column error :math:`\lVert\pi^\top\mathbf 1 - b\rVert_1` measures convergence."""
    log_a, log_b = a.log(), b.log()
    f = torch.zeros_like(a)
    for level in _eps_levels(cost, eps, scaling)[:-1]:
        g = _softmin(level, cost.T, log_a, f)
        f = _softmin(level, cost, log_b, g)

    def column_error(f: torch.Tensor, g: torch.Tensor) -> float:
        col = torch.exp(log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - cost) / eps).sum(0)
        return float((col - b).abs().sum())

    err, it = math.inf, 0
    while it < max_iter:
        g = _softmin(eps, cost.T, log_a, f)
        f = _softmin(eps, cost, log_b, g)
        it += 1
        if it % 5 == 0 or it == max_iter:
            err = column_error(f, g)
            if err <= tol:
                break
    if err > tol and strict:
        raise RuntimeError(
            f"Sinkhorn did not converge: marginal error {err:.3g} > tol {tol:.3g} after {max_iter} "
            "iterations; increase max_iter or blur, or pass strict=False to accept a best effort"
        )
    plan = torch.exp(log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - cost) / eps)
    return EntropicOT(plan, f, g, (a * f).sum() + (b * g).sum(), it, err)


def _sinkhorn_symmetric(
    cost: torch.Tensor,
    a: torch.Tensor,
    eps: float,
    scaling: float,
    max_iter: int,
    tol: float,
    strict: bool = True,
) -> torch.Tensor:
    r"""Symmetric potential of :math:`\mathrm{OT}_\varepsilon(\alpha, \alpha)` by averaged updates."""
    log_a = a.log()
    f = _softmin(float(cost.max()), cost, log_a, torch.zeros_like(a))
    for level in _eps_levels(cost, eps, scaling):
        f = 0.5 * (f + _softmin(level, cost, log_a, f))
    for _ in range(max_iter):
        new = 0.5 * (f + _softmin(eps, cost, log_a, f))
        change = float((new - f).abs().max())
        f = new
        if change <= tol * eps:
            return f
    if not strict:
        return f
    raise RuntimeError(
        f"symmetric Sinkhorn did not converge in {max_iter} iterations; increase max_iter or blur"
    )


def _entropic_args(
    blur: float, scaling: float, max_iter: int, tol: float, strict: bool
) -> tuple[float, float, int, float, bool]:
    b = _check_blur(blur)
    if isinstance(scaling, bool) or not isinstance(scaling, int | float) or not 0.0 < scaling < 1.0:
        raise ValueError(f"scaling must lie strictly between 0 and 1; got {scaling!r}")
    max_iter = _check_int(max_iter, "max_iter", low=1)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol > 0:
        raise ValueError(f"tol must be a positive number; got {tol!r}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool; got {type(strict).__name__}")
    return 2.0 * b * b, float(scaling), max_iter, float(tol), strict


def entropic_plan(
    x: ArrayLike,
    y: ArrayLike,
    *,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    blur: float = 0.05,
    scaling: float = 0.5,
    max_iter: int = 5000,
    tol: float = 1e-3,
    strict: bool = True,
) -> EntropicOT:
    r"""Entropic optimal transport plan (log-domain Sinkhorn with :math:`\varepsilon`-annealing).

    .. math::

        \mathrm{OT}_\varepsilon(\alpha, \beta) = \min_{\pi \in \Pi(a, b)} \sum_{ij}\pi_{ij}
        \lVert x_i - y_j\rVert^2 + \varepsilon\,\mathrm{KL}(\pi \,\|\, a \otimes b),
        \qquad \varepsilon = 2\,\mathrm{blur}^2,

    with the plan :math:`\pi_{ij} = a_i b_j \exp((f_i + g_j - C_{ij})/\varepsilon)` and value
    :math:`\langle a, f\rangle + \langle b, g\rangle` at convergence. :math:`\varepsilon` is annealed
    geometrically (factor ``scaling``) from :math:`\max C` down to its target, then iterated until the
    marginal error is at most ``tol``. Every iteration ends with the update that makes the rows exact
    (:math:`\pi\mathbf 1 = a`), so a barycentric map from the plan is always a proper conditional mean;
    the error is measured on the columns. Runs on ``x``'s device.

    Parameters
    ----------
    x, y
        Point clouds ``(n, d)`` and ``(m, d)``.
    a, b
        Probability weights (``None``: uniform).
    blur
        Length scale of the entropic blur (data units); :math:`\varepsilon = 2\,\mathrm{blur}^2`.
    scaling
        Annealing factor in ``(0, 1)``.
    max_iter
        Iterations allowed at the final :math:`\varepsilon`.
    tol
        Target L1 marginal error :math:`\lVert\pi^\top\mathbf 1 - b\rVert_1` (the default 1e-3 misplaces at
        most 0.1% of the mass). Small blur relative to the data diameter, or mass that has to cross
        between well-separated clusters, needs many iterations: the error message says so when
        ``max_iter`` runs out.
    strict
        Raise when ``tol`` is not met within ``max_iter`` iterations (default); ``False`` returns the best
        effort (a fixed budget, as geomloss uses) with the remaining error in ``marginal_error``.

    Returns
    -------
    EntropicOT

    Raises
    ------
    RuntimeError
        If the marginal error is still above ``tol`` after ``max_iter`` iterations (unless ``strict=False``).

    Examples
    --------
    >>> res = entropic_plan([[0.0], [1.0]], [[1.1], [0.1]], blur=0.1)
    >>> res.plan.sum(1)
    tensor([0.5000, 0.5000], dtype=torch.float64)
    >>> bool(res.plan[0, 1] > 0.49)
    True
    """
    xt, yt = _clouds(x, y)
    eps, scaling, max_iter, tol, strict = _entropic_args(blur, scaling, max_iter, tol, strict)
    at = _weights(a, xt.shape[0], "a", xt)
    bt = _weights(b, yt.shape[0], "b", yt)
    if bool((at == 0).any()) or bool((bt == 0).any()):
        raise ValueError("entropic_plan needs strictly positive weights; drop the zero-weight points")
    res = _sinkhorn(
        _sqdist(xt.double(), yt.double()), at.double(), bt.double(), eps, scaling, max_iter, tol, strict
    )
    dt = xt.dtype
    return EntropicOT(
        res.plan.to(dt), res.f.to(dt), res.g.to(dt), res.value.to(dt), res.n_iter, res.marginal_error
    )


def sinkhorn_divergence(
    x: ArrayLike,
    y: ArrayLike,
    *,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    blur: float = 0.05,
    scaling: float = 0.5,
    max_iter: int = 5000,
    tol: float = 1e-3,
    strict: bool = True,
    backend: Literal["torch", "geomloss"] = "torch",
) -> torch.Tensor:
    r"""Debiased Sinkhorn divergence (Feydy et al., AISTATS 2019) for the squared Euclidean cost.

    .. math::

        S_\varepsilon(\alpha, \beta) = \mathrm{OT}_\varepsilon(\alpha, \beta)
        - \tfrac12\mathrm{OT}_\varepsilon(\alpha, \alpha) - \tfrac12\mathrm{OT}_\varepsilon(\beta, \beta),

    with :math:`\mathrm{OT}_\varepsilon` as in :func:`entropic_plan`. :math:`S_\varepsilon \ge 0`,
    :math:`S_\varepsilon(\alpha,\alpha) = 0`, and :math:`S_\varepsilon \to W_2^2` as blur :math:`\to 0`:
    the value is in **squared** data units and approximates :math:`W_2^2` (it is twice geomloss'
    ``SamplesLoss("sinkhorn", p=2, blur=blur)``, which approximates :math:`\tfrac12 W_2^2`).

    Parameters
    ----------
    x, y
        Point clouds ``(n, d)`` and ``(m, d)``.
    a, b
        Probability weights (``None``: uniform).
    blur, scaling, max_iter, tol, strict
        As in :func:`entropic_plan` (``max_iter``, ``tol`` and ``strict`` apply to the torch backend).
    backend
        ``"torch"`` (built in) or ``"geomloss"`` (geomloss' tensorized solver, same blur and scaling).

    Returns
    -------
    torch.Tensor
        0-d tensor (squared data units), not differentiable; for particle gradients use
        :func:`sinkhorn_displacement`.

    Examples
    --------
    >>> x = [[0.0, 0.0], [1.0, 0.0]]
    >>> y = [[0.0, 2.0], [1.0, 2.0]]
    >>> round(float(sinkhorn_divergence(x, y, blur=0.01)), 4)
    4.0
    """
    xt, yt = _clouds(x, y)
    eps, scaling, max_iter, tol, strict = _entropic_args(blur, scaling, max_iter, tol, strict)
    at = _weights(a, xt.shape[0], "a", xt)
    bt = _weights(b, yt.shape[0], "b", yt)
    if backend == "geomloss":
        geomloss = _import_geomloss()
        loss = geomloss.SamplesLoss(
            "sinkhorn", p=2, blur=blur, scaling=scaling, debias=True, backend="tensorized"
        )
        with torch.no_grad():
            return 2.0 * loss(at, xt, bt, yt)
    if backend != "torch":
        raise ValueError(f"backend must be one of 'torch', 'geomloss'; got {backend!r}")
    with torch.no_grad():
        x64, y64, a64, b64 = xt.double(), yt.double(), at.double(), bt.double()
        xy = _sinkhorn(_sqdist(x64, y64), a64, b64, eps, scaling, max_iter, tol, strict).value
        fx = _sinkhorn_symmetric(_sqdist(x64, x64), a64, eps, scaling, max_iter, tol, strict)
        fy = _sinkhorn_symmetric(_sqdist(y64, y64), b64, eps, scaling, max_iter, tol, strict)
        return (xy - (a64 * fx).sum() - (b64 * fy).sum()).to(xt.dtype)


def sinkhorn_displacement(
    x: ArrayLike,
    y: ArrayLike,
    *,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    blur: float = 0.05,
    scaling: float = 0.5,
    max_iter: int = 5000,
    tol: float = 1e-3,
    strict: bool = True,
) -> torch.Tensor:
    r"""Particle displacement descending the Sinkhorn divergence: :math:`T_{\alpha\beta} - T_{\alpha\alpha}`.

    With :math:`T_{\alpha\beta}(x_i) = \sum_j \pi^{\alpha\beta}_{ij} y_j / a_i` the entropic barycentric
    map towards ``y`` and :math:`T_{\alpha\alpha}` the same map of the symmetric problem, the envelope
    theorem gives

    .. math::

        \nabla_{x_i} S_\varepsilon(\alpha, \beta)
        = 2 a_i\,\bigl(T_{\alpha\alpha}(x_i) - T_{\alpha\beta}(x_i)\bigr),

    so the returned field is :math:`-\nabla_{x_i} S_\varepsilon / (2 a_i)`, the Wasserstein-gradient
    step on :math:`\tfrac12 S_\varepsilon` (data units). As blur :math:`\to 0` it tends to the exact
    barycentric displacement :math:`T(x_i) - x_i`.

    Parameters
    ----------
    x, y
        The moving particles ``(n, d)`` and the target ``(m, d)``.
    a, b, blur, scaling, max_iter, tol, strict
        As in :func:`entropic_plan`.

    Returns
    -------
    torch.Tensor
        ``(n, d)`` displacements, computed without autograd.

    Examples
    --------
    >>> v = sinkhorn_displacement([[0.0], [1.0]], [[2.0], [3.0]], blur=0.01)
    >>> v.round(decimals=3)
    tensor([[2.],
            [2.]], dtype=torch.float64)
    """
    yt = as_tensor(y, name="y", ndim=2, min_rows=1)
    bt = None if b is None else as_tensor(b, name="b", ndim=1)
    return _multi_displacement(x, [yt], [1.0], a, [bt], blur, scaling, max_iter, tol, strict)


def multi_sinkhorn_displacement(
    x: ArrayLike,
    ys: Sequence[ArrayLike],
    *,
    weights: Sequence[float] | None = None,
    a: ArrayLike | None = None,
    blur: float = 0.05,
    scaling: float = 0.5,
    max_iter: int = 5000,
    tol: float = 1e-3,
    strict: bool = True,
) -> torch.Tensor:
    r"""Displacement descending a weighted sum of Sinkhorn divergences to several clouds.

    For domains :math:`\beta_1..\beta_K` (uniform weights within each) and weights :math:`w_k` summing to 1,

    .. math::

        -\frac{1}{2a_i}\nabla_{x_i}\sum_k w_k S_\varepsilon(\alpha, \beta_k)
        = \sum_k w_k T_{\alpha\beta_k}(x_i) - T_{\alpha\alpha}(x_i),

    so the symmetric problem of :math:`\alpha` is solved once. This is the multi-marginal term of the
    evidence perturber; with one domain it equals :func:`sinkhorn_displacement`.

    Parameters
    ----------
    x
        ``(n, d)`` particles.
    ys
        Domain clouds ``(m_k, d)``.
    weights
        :math:`w_k` (non-negative, summing to 1; ``None``: equal).
    a, blur, scaling, max_iter, tol, strict
        As in :func:`entropic_plan`.

    Returns
    -------
    torch.Tensor
        ``(n, d)``.

    Examples
    --------
    >>> v = multi_sinkhorn_displacement([[0.0], [1.0]], [[[2.0], [3.0]], [[0.0], [1.0]]], blur=0.01)
    >>> v.round(decimals=3)
    tensor([[1.],
            [1.]], dtype=torch.float64)
    """
    if not isinstance(ys, list | tuple) or not ys:
        raise ValueError("ys must be a non-empty list or tuple of (m_k, d) clouds")
    clouds = [as_tensor(yk, name=f"ys[{k}]", ndim=2, min_rows=1) for k, yk in enumerate(ys)]
    if weights is None:
        w = [1.0 / len(clouds)] * len(clouds)
    else:
        w = [float(v) for v in weights]
        if len(w) != len(clouds) or any(v < 0 for v in w) or abs(sum(w) - 1.0) > 1e-6:
            raise ValueError(
                f"weights must be {len(clouds)} non-negative numbers summing to 1; got {weights!r}"
            )
    return _multi_displacement(x, clouds, w, a, [None] * len(clouds), blur, scaling, max_iter, tol, strict)


def _multi_displacement(
    x: ArrayLike,
    clouds: list[torch.Tensor],
    w: list[float],
    a: ArrayLike | None,
    bs: list[torch.Tensor | None],
    blur: float,
    scaling: float,
    max_iter: int,
    tol: float,
    strict: bool,
) -> torch.Tensor:
    xt = as_tensor(x, name="x", ndim=2, min_rows=1)
    eps, scaling, max_iter, tol, strict = _entropic_args(blur, scaling, max_iter, tol, strict)
    with torch.no_grad():
        x64 = xt.double()
        a64 = _weights(a, x64.shape[0], "a", x64)
        pull = torch.zeros_like(x64)
        for yk, wk, bk in zip(clouds, w, bs, strict=True):
            _, yc = _clouds(xt, yk)
            y64 = yc.double()
            b64 = _weights(bk, y64.shape[0], "b", y64)
            plan = _sinkhorn(_sqdist(x64, y64), a64, b64, eps, scaling, max_iter, tol, strict).plan
            pull = pull + wk * (plan @ y64) / a64[:, None]
        cxx = _sqdist(x64, x64)
        fx = _sinkhorn_symmetric(cxx, a64, eps, scaling, max_iter, tol, strict)
        log_a = a64.log()
        plan_xx = torch.exp(log_a[:, None] + log_a[None, :] + (fx[:, None] + fx[None, :] - cxx) / eps)
        return (pull - (plan_xx @ x64) / a64[:, None]).to(
            xt.dtype if xt.dtype == torch.float64 else torch.float32
        )


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


def sliced_wasserstein2(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_projections: int = 128,
    seed: int | torch.Generator = 0,
    projections: ArrayLike | None = None,
) -> torch.Tensor:
    r"""Sliced 2-Wasserstein distance between two uniformly weighted clouds.

    .. math::

        SW_2(\alpha, \beta)
        = \Bigl(\frac1L\sum_{l=1}^L W_2^2(\theta_l^\top\alpha, \theta_l^\top\beta)\Bigr)^{1/2},

    with :math:`L` random unit directions :math:`\theta_l` and the 1-D :math:`W_2^2` computed exactly
    from quantile functions (sorting; ``n`` and ``m`` may differ). Data units; :math:`SW_2 \le W_2`.
    This is POT's ``sliced_wasserstein_distance`` with ``p=2`` for the same directions.

    Parameters
    ----------
    x, y
        Point clouds ``(n, d)`` and ``(m, d)``.
    n_projections
        Number of random directions (ignored when ``projections`` is given).
    seed
        Seed or generator for the directions (drawn on the CPU).
    projections
        Explicit directions ``(d, L)``; each column is normalised to unit length.

    Returns
    -------
    torch.Tensor
        0-d tensor, differentiable in ``x`` and ``y``.

    Examples
    --------
    >>> x = [[0.0, 0.0], [1.0, 1.0]]
    >>> float(sliced_wasserstein2(x, [[2.0, 0.0], [3.0, 1.0]], projections=[[1.0], [0.0]]))
    2.0
    """
    xt, yt = _clouds(x, y)
    d = xt.shape[1]
    if projections is None:
        n_projections = _check_int(n_projections, "n_projections", low=1)
        gen = (
            seed
            if isinstance(seed, torch.Generator)
            else torch.Generator().manual_seed(_check_int(seed, "seed"))
        )
        theta = torch.randn(d, n_projections, generator=gen, dtype=torch.float64)
    else:
        theta = as_tensor(projections, name="projections", ndim=2).double().cpu()
        if theta.shape[0] != d:
            raise ValueError(f"projections must have shape ({d}, L); got {tuple(theta.shape)}")
    norms = theta.norm(dim=0, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("projections contain a zero direction")
    theta = (theta / norms).to(dtype=xt.dtype, device=xt.device)
    px, _ = torch.sort(xt @ theta, dim=0)
    py, _ = torch.sort(yt @ theta, dim=0)
    n, m = px.shape[0], py.shape[0]
    # merge the quantile levels of both empirical CDFs; on each interval both quantile functions are constant
    levels = torch.cat([torch.arange(1, n + 1) / n, torch.arange(1, m + 1) / m]).double()
    levels, _ = torch.sort(levels)
    widths = torch.diff(levels, prepend=torch.zeros(1, dtype=torch.float64))
    mid = (levels - widths / 2).clamp(0.0, 1.0)
    ix = torch.clamp((mid * n).long(), max=n - 1).to(xt.device)
    iy = torch.clamp((mid * m).long(), max=m - 1).to(xt.device)
    w = widths.to(dtype=xt.dtype, device=xt.device)
    per_direction = ((px[ix] - py[iy]) ** 2 * w[:, None]).sum(0)
    return per_direction.mean().sqrt()
