r"""Exact 0-dimensional persistent homology (H0) of a point cloud or a distance matrix.

For the Vietoris-Rips (equivalently Čech, or single-linkage) filtration every point is born at 0 and a
connected component dies when it merges with an older one. The death times are exactly the edge lengths of
a minimum spanning tree (MST) of the complete graph on the points, and the order in which MST edges join
components is the single-linkage dendrogram. :func:`h0_persistence` computes that MST:

* from points, by a **tiled Borůvka** algorithm in torch (CPU or CUDA) that never forms the
  :math:`n \times n` distance matrix: memory is :math:`O(n k + T)` for a cache of the :math:`k = 16`
  nearest neighbours and one tile of :math:`T` distances, time :math:`O(n^2 d)` in matrix products in the
  worst case and far less in practice (a point whose cached nearest outside neighbour is still outside
  its component is never scanned again);
* from a dense distance matrix, by Prim's algorithm in :math:`O(n^2)`.

Nothing falls back to another statistic: the result is the MST of the metric that was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from shiftlab.functional._checks import _check_int
from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional._mst import _boruvka, _find, _prim_dense

__all__ = ["H0Diagram", "Metric", "h0_persistence", "h0_total_persistence"]

Metric = Literal["euclidean", "cosine"]
_METRICS: tuple[str, ...] = ("euclidean", "cosine")
#: Default tile (number of distance entries computed at once): 2^22 entries (16 MB in float32) on the
#: CPU, 2^26 on CUDA, where larger matrix products keep the device busy.
_TILE_CPU = 1 << 22
_TILE_CUDA = 1 << 26


@dataclass(frozen=True, eq=False)
class H0Diagram:
    r"""The H0 persistence diagram of ``n`` points, with its merge tree.

    Every point is born at 0; the ``n - 1`` finite deaths are the MST edge lengths, and one component
    never dies (death :math:`+\infty`, omitted from :attr:`deaths`).

    Attributes
    ----------
    deaths
        float64, shape ``(n - 1,)``, nondecreasing: the death time of each finite H0 class.
    merge_order
        int64, shape ``(n - 1, 2)``: the MST edge ``(i, j)``, ``i < j`` (point indices), whose length is
        the death in the same row, i.e. the order in which single linkage joins the points.
    linkage
        float64, shape ``(n - 1, 4)``: the dendrogram in :func:`scipy.cluster.hierarchy.linkage` format.
        Row ``k`` merges clusters ``linkage[k, 0] < linkage[k, 1]`` (ids below ``n`` are points, id
        ``n + m`` is the cluster formed in row ``m``) at height ``linkage[k, 2]`` into a cluster of
        ``linkage[k, 3]`` points.
    n_points
        ``n``.
    metric
        ``"euclidean"``, ``"cosine"`` or ``"precomputed"``.

    All tensors live on the CPU.
    """

    deaths: torch.Tensor
    merge_order: torch.Tensor
    linkage: torch.Tensor
    n_points: int
    metric: str

    @property
    def total_persistence(self) -> float:
        r"""Sum of the finite deaths, :math:`\sum_k d_k`: the length of the minimum spanning tree."""
        return float(self.deaths.sum())

    def betti0(self, scale: float) -> int:
        r"""Number of connected components at filtration value ``scale``: :math:`1 + \#\{k: d_k > t\}`.

        Examples
        --------
        >>> diagram = h0_persistence([[0.0], [1.0], [3.0]])
        >>> diagram.betti0(0.5), diagram.betti0(1.5), diagram.betti0(2.0)
        (3, 2, 1)
        """
        return 1 + int((self.deaths > scale).sum())

    def pairs(self) -> torch.Tensor:
        """(birth, death) pairs as ripser's ``dgms[0]``: shape ``(n, 2)``, the last death is ``inf``.

        Examples
        --------
        >>> h0_persistence([[0.0], [2.0]]).pairs()
        tensor([[0., 2.],
                [0., inf]], dtype=torch.float64)
        """
        deaths = torch.cat([self.deaths, torch.tensor([float("inf")], dtype=torch.float64)])
        return torch.stack([torch.zeros_like(deaths), deaths], dim=1)


def h0_persistence(
    points: ArrayLike | None = None,
    *,
    distances: ArrayLike | None = None,
    metric: Metric | None = None,
    tile_size: int | None = None,
) -> H0Diagram:
    r"""Exact H0 persistence (MST deaths, merge order, single-linkage dendrogram).

    For points :math:`x_1, \dots, x_n` and a metric :math:`\delta`, the Rips filtration at scale
    :math:`t` joins :math:`i` and :math:`j` when :math:`\delta(x_i, x_j) \le t`. Its H0 deaths are the
    edge weights :math:`w_1 \le \dots \le w_{n-1}` of a minimum spanning tree, which are the same for
    every MST. Metrics:

    * ``"euclidean"``: :math:`\delta(x, y) = \lVert x - y \rVert_2`;
    * ``"cosine"``: :math:`\delta(x, y) = 1 - \frac{x^\top y}{\lVert x\rVert \lVert y\rVert}
      = \tfrac12 \lVert \hat x - \hat y \rVert_2^2` with :math:`\hat x = x / \lVert x \rVert` (as
      :func:`scipy.spatial.distance.cosine` and ripser). It is a monotone function of the Euclidean
      distance between the normalised points, so both give the same tree.

    **Points** are processed by Borůvka's algorithm: every round, each component is joined to its
    nearest other component. Candidate edges are searched with tiled matrix products,
    :math:`\lVert x_i - x_j \rVert^2 = \lVert x_i\rVert^2 + \lVert x_j\rVert^2 - 2 x_i^\top x_j` on
    centred data in the input's precision (half precision is computed in float32); the first round keeps
    each point's 16 nearest neighbours, later rounds rescan only points whose cached nearest outside
    neighbour has joined their own component and whose lower bound could beat their component's best
    candidate. The reported deaths are recomputed directly as :math:`\lVert x_i - x_j \rVert` in float64.
    They equal ripser's and scipy's single linkage up to rounding: only candidate edges whose lengths
    differ by less than the matrix-product rounding (:math:`\approx \varepsilon \max_i\lVert x_i -
    \bar x\rVert^2`, :math:`\varepsilon` the machine epsilon of the working dtype) can be exchanged.
    On CUDA, float32 matrix products follow ``torch.backends.cuda.matmul.allow_tf32``: with TF32 enabled
    the search runs at about 3 significant digits, so pass float64 points if near-ties matter.

    **A distance matrix** (symmetric, zero diagonal, nonnegative) is processed by Prim's algorithm.

    Parameters
    ----------
    points
        Shape ``(n, d)``, ``n >= 2``, on any device. Exactly one of ``points`` and ``distances``.
    distances
        Shape ``(n, n)``, ``n >= 2``: a dense dissimilarity matrix.
    metric
        ``"euclidean"`` (default) or ``"cosine"`` for ``points``; must be left ``None`` with
        ``distances``.
    tile_size
        Distance entries computed at once (default :math:`2^{22}` on the CPU, :math:`2^{26}` on CUDA); at
        least ``n`` so that one row fits. Only memory and speed depend on it, never the result.

    Returns
    -------
    H0Diagram
        Deaths (sorted), merge order and scipy-format linkage, on the CPU.

    Raises
    ------
    ValueError
        Both or neither of ``points`` / ``distances``; wrong shapes; fewer than 2 points; non-finite
        values; an unknown metric (the valid ones are listed); a zero vector under the cosine metric; a
        distance matrix that is not symmetric, has a nonzero diagonal or a negative entry; ``tile_size``
        below ``n``.

    Examples
    --------
    >>> diagram = h0_persistence([[0.0, 0.0], [0.0, 1.0], [4.0, 0.0], [4.0, 2.0]])
    >>> diagram.deaths
    tensor([1., 2., 4.], dtype=torch.float64)
    >>> diagram.merge_order
    tensor([[0, 1],
            [2, 3],
            [0, 2]])
    >>> diagram.linkage
    tensor([[0., 1., 1., 2.],
            [2., 3., 2., 2.],
            [4., 5., 4., 4.]], dtype=torch.float64)
    >>> h0_persistence([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], metric="cosine").deaths
    tensor([0.2929, 0.2929], dtype=torch.float64)
    """
    if (points is None) == (distances is None):
        raise ValueError("pass exactly one of points=(n, d) or distances=(n, n)")
    if distances is not None:
        if metric is not None:
            raise ValueError(
                f"metric={metric!r} applies to points only; a distance matrix is used as given "
                "(leave metric=None)"
            )
        d = _check_distances(distances)
        edges, weights = _prim_dense(d)
        return _diagram(edges, weights, d.shape[0], "precomputed")
    assert points is not None
    metric_name = "euclidean" if metric is None else metric
    if metric_name not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(_METRICS)}")
    x = as_tensor(points, name="points", ndim=2, min_rows=2)
    n = x.shape[0]
    if x.shape[1] == 0:
        raise ValueError("points must have at least one column (feature)")
    if tile_size is None:
        tile = _TILE_CUDA if x.device.type == "cuda" else _TILE_CPU
    else:
        tile = _check_int(tile_size, "tile_size", low=n)
    work_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    exact = x.to(torch.float64)
    if metric_name == "cosine":
        norms = torch.linalg.vector_norm(exact, dim=1)
        zero = torch.nonzero(norms == 0).flatten()
        if zero.numel() > 0:
            raise ValueError(
                f"the cosine distance is undefined for zero vectors; rows {zero[:10].tolist()} are zero"
            )
        exact = exact / norms[:, None]
    edges = _boruvka(exact.to(work_dtype), max(1, tile // n))
    a, b = edges[:, 0].to(exact.device), edges[:, 1].to(exact.device)
    diff = exact[a] - exact[b]
    if metric_name == "cosine":
        weights = 0.5 * (diff * diff).sum(dim=1)
    else:
        weights = torch.linalg.vector_norm(diff, dim=1)
    return _diagram(edges, weights.cpu(), n, metric_name)


def h0_total_persistence(distances: ArrayLike) -> torch.Tensor:
    r"""H0 total persistence :math:`\sum_k d_k` (the MST length) of a batch of small distance matrices.

    Batched Prim's algorithm: for ``B`` matrices of size ``n`` it runs ``n - 1`` vectorised steps, so it
    suits many small problems (e.g. the class geometries of a permutation null) where
    :func:`h0_persistence` would loop in Python. Equal to ``h0_persistence(distances=D).total_persistence``
    for each matrix. The result is detached (a statistic, not a loss).

    Parameters
    ----------
    distances
        Shape ``(..., n, n)``, ``n >= 2``: symmetric, zero diagonal, nonnegative, finite.

    Returns
    -------
    torch.Tensor
        Shape ``(...)``, float64, on the input's device.

    Examples
    --------
    >>> import torch
    >>> d = torch.tensor([[0.0, 1.0, 3.0], [1.0, 0.0, 2.0], [3.0, 2.0, 0.0]])
    >>> h0_total_persistence(torch.stack([d, 2 * d]))
    tensor([3., 6.], dtype=torch.float64)
    """
    d = as_tensor(distances, name="distances").detach().to(torch.float64)
    if d.ndim < 2 or d.shape[-1] != d.shape[-2] or d.shape[-1] < 2:
        raise ValueError(f"distances must have shape (..., n, n) with n >= 2; got {tuple(d.shape)}")
    n = d.shape[-1]
    batch = _validate_square(d.reshape(-1, n, n))
    rows = torch.arange(batch.shape[0], device=d.device)
    best = batch[:, 0, :].clone()
    in_tree = torch.zeros(batch.shape[0], n, dtype=torch.bool, device=d.device)
    in_tree[:, 0] = True
    total = torch.zeros(batch.shape[0], dtype=torch.float64, device=d.device)
    for _ in range(n - 1):
        masked = best.masked_fill(in_tree, float("inf"))
        v = masked.argmin(dim=1)
        total += masked[rows, v]
        in_tree[rows, v] = True
        best = torch.minimum(best, batch[rows, v, :])
    return total.reshape(d.shape[:-2])


# ----------------------------------------------------------------------------------------------------------
# validation and the dendrogram
# ----------------------------------------------------------------------------------------------------------


def _check_distances(distances: ArrayLike) -> torch.Tensor:
    d = as_tensor(distances, name="distances", ndim=2, min_rows=2).to(torch.float64)
    if d.shape[1] != d.shape[0]:
        raise ValueError(f"distances must be square (n, n); got shape {tuple(d.shape)}")
    return _validate_square(d)


def _validate_square(d: torch.Tensor) -> torch.Tensor:
    """Check a batch ``(..., n, n)`` of dissimilarity matrices; return it exactly symmetrised."""
    if bool((torch.diagonal(d, dim1=-2, dim2=-1) != 0).any()):
        raise ValueError("distances must have a zero diagonal (the distance of a point to itself)")
    if bool((d < 0).any()):
        raise ValueError(f"distances must be nonnegative; the smallest entry is {float(d.min()):.3g}")
    dt = d.transpose(-1, -2)
    asym = float((d - dt).abs().max())
    if asym > 1e-12 * max(1.0, float(d.abs().max())):
        raise ValueError(f"distances must be symmetric; max |D - D^T| = {asym:.3g}")
    return torch.minimum(d, dt)


def _diagram(edges: torch.Tensor, weights: torch.Tensor, n: int, metric: str) -> H0Diagram:
    """Sort the MST edges by (weight, smaller index, larger index) and build scipy's linkage."""
    w = weights.detach().to(torch.float64).cpu().numpy()
    e = edges.cpu().numpy().astype(np.int64)
    lo, hi = e.min(axis=1), e.max(axis=1)
    order = np.lexsort((hi, lo, w))
    lo, hi, w = lo[order], hi[order], w[order]
    return H0Diagram(
        deaths=torch.from_numpy(w.copy()),
        merge_order=torch.from_numpy(np.stack([lo, hi], axis=1)),
        linkage=torch.from_numpy(_linkage(lo, hi, w, n)),
        n_points=n,
        metric=metric,
    )


def _linkage(
    lo: npt.NDArray[np.int64], hi: npt.NDArray[np.int64], w: npt.NDArray[np.float64], n: int
) -> npt.NDArray[np.float64]:
    """scipy's ``label`` step: replay sorted MST edges through a union-find with new ids ``n + k``."""
    parent = np.arange(2 * n - 1)
    size = np.ones(2 * n - 1, dtype=np.int64)
    z = np.empty((n - 1, 4), dtype=np.float64)
    for k in range(n - 1):
        ra, rb = _find(parent, int(lo[k])), _find(parent, int(hi[k]))
        new = n + k
        parent[ra] = parent[rb] = new
        size[new] = size[ra] + size[rb]
        z[k] = (min(ra, rb), max(ra, rb), w[k], size[new])
    return z
