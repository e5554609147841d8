r"""Minimum spanning tree engines behind :func:`~shiftlab.functional.topology.h0_persistence`.

* :func:`_boruvka`: tiled Borůvka on the rows of a point matrix, in torch (CPU or CUDA), never forming
  the :math:`n \times n` distance matrix;
* :func:`_prim_dense`: Prim's algorithm on a dense distance matrix, :math:`O(n^2)`;
* :func:`_find` / :class:`_UnionFind`: the union-find both the engine and the dendrogram replay use.

Each returns the MST edges (and, for Prim, their weights); sorting them and building the diagram is
:mod:`shiftlab.functional.topology`'s job.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

#: Nearest neighbours kept per point after the first Borůvka round. 16 keeps the cache small
#: (n x 16 indices) while it answers most second- and third-round queries without a scan.
_KNN_CACHE = 16


def _find(parent: npt.NDArray[np.int64], i: int) -> int:
    root = i
    while parent[root] != root:
        root = int(parent[root])
    while parent[i] != root:  # path compression
        parent[i], i = root, int(parent[i])
    return root


# ----------------------------------------------------------------------------------------------------------
# Prim on a dense matrix
# ----------------------------------------------------------------------------------------------------------


def _prim_dense(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = d.shape[0]
    best = d[0].clone()
    parent = torch.zeros(n, dtype=torch.int64)
    in_tree = torch.zeros(n, dtype=torch.bool)
    in_tree[0] = True
    inf = torch.tensor(float("inf"), dtype=d.dtype)
    edges = torch.empty(n - 1, 2, dtype=torch.int64)
    weights = torch.empty(n - 1, dtype=torch.float64)
    for k in range(n - 1):
        v = int(torch.argmin(torch.where(in_tree, inf, best)))
        edges[k, 0], edges[k, 1] = parent[v], v
        weights[k] = best[v]
        in_tree[v] = True
        closer = d[v] < best
        best = torch.where(closer, d[v], best)
        parent = torch.where(closer, v, parent)
    return edges, weights


# ----------------------------------------------------------------------------------------------------------
# tiled Borůvka on points
# ----------------------------------------------------------------------------------------------------------


def _shifted_sq_distances(rows: torch.Tensor, x: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    r""":math:`\lVert x_j\rVert^2 - 2 x_i^\top x_j` for ``i`` in ``rows`` and every ``j``, (len(rows), n).

    This is the squared distance minus the row constant :math:`\lVert x_i \rVert^2`, which changes no
    row's ordering: one fused matrix product, no further temporaries.
    """
    return torch.addmm(sq[None, :], x[rows], x.T, alpha=-2.0)


def _boruvka(x: torch.Tensor, rows_per_tile: int) -> torch.Tensor:
    """The edges ``(n - 1, 2)`` of a minimum spanning tree of the rows of ``x``, by Borůvka's algorithm."""
    n = x.shape[0]
    device = x.device
    x = x - x.mean(dim=0, keepdim=True)  # smaller norms: less cancellation in the matrix product
    sq = (x * x).sum(dim=1)
    inf = float("inf")
    k = min(_KNN_CACHE, n - 1)
    knn_d2 = torch.empty(n, k, dtype=x.dtype, device=device)
    knn_idx = torch.empty(n, k, dtype=torch.int64, device=device)
    for start in range(0, n, rows_per_tile):
        rows = torch.arange(start, min(start + rows_per_tile, n), device=device)
        scores = _shifted_sq_distances(rows, x, sq)
        scores[torch.arange(rows.numel(), device=device), rows] = inf
        top = torch.topk(scores, k, dim=1, largest=False, sorted=True)
        knn_d2[rows] = (top.values + sq[rows, None]).clamp_(min=0.0)
        knn_idx[rows] = top.indices
        del scores, top  # free the tile before the next one is allocated
    best_j = torch.full((n,), -1, dtype=torch.int64, device=device)  # last scanned nearest outside point
    best_d2 = torch.zeros(n, dtype=x.dtype, device=device)
    comp = torch.arange(n, device=device)
    union = _UnionFind(n)
    edges: list[npt.NDArray[np.int64]] = []
    n_edges = 0
    arange_n = torch.arange(n, device=device)
    while n_edges < n - 1:
        outside = comp[knn_idx] != comp[:, None]
        from_knn = outside.any(dim=1)
        first = outside.to(torch.int8).argmax(dim=1)
        cand_j = knn_idx[arange_n, first]
        cand_d2 = knn_d2[arange_n, first]
        valid_best = (best_j >= 0) & (comp[best_j.clamp(min=0)] != comp)
        use_best = ~from_knn & valid_best
        cand_j = torch.where(use_best, best_j, cand_j)
        cand_d2 = torch.where(use_best, best_d2, cand_d2)
        fresh = from_knn | valid_best
        # A stale point's nearest outside neighbour is at least as far as its k-th neighbour (all k are
        # inside) and at least as far as its last scanned one (the outside set only shrinks).
        lower = torch.maximum(knn_d2[:, -1], torch.where(best_j >= 0, best_d2, 0.0))
        cand_d2 = torch.where(fresh, cand_d2, inf)
        comp_best = torch.full((n,), inf, dtype=x.dtype, device=device)
        comp_best.scatter_reduce_(0, comp, cand_d2, reduce="amin")
        scan = torch.nonzero(~fresh & (lower <= comp_best[comp])).flatten()
        for start in range(0, scan.numel(), rows_per_tile):
            rows = scan[start : start + rows_per_tile]
            scores = _shifted_sq_distances(rows, x, sq)
            scores.masked_fill_(comp[rows, None] == comp[None, :], inf)
            found = torch.min(scores, dim=1)
            d2 = (found.values + sq[rows]).clamp_(min=0.0)
            best_j[rows], best_d2[rows] = found.indices, d2
            cand_j[rows], cand_d2[rows] = found.indices, d2
            del scores, found
        comp_best.fill_(inf).scatter_reduce_(0, comp, cand_d2, reduce="amin")
        winners = torch.nonzero(cand_d2 == comp_best[comp]).flatten()
        i_np = winners.cpu().numpy()
        j_np = cand_j[winners].cpu().numpy()
        w_np = cand_d2[winners].to(torch.float64).cpu().numpy()
        lo, hi = np.minimum(i_np, j_np), np.maximum(i_np, j_np)
        order = np.lexsort((hi, lo, w_np))
        for idx in order:
            if union.union(int(lo[idx]), int(hi[idx])):
                edges.append(np.array([lo[idx], hi[idx]], dtype=np.int64))
                n_edges += 1
        comp = torch.from_numpy(union.roots()).to(device)
    return torch.from_numpy(np.stack(edges))


class _UnionFind:
    """Union-find over point indices with path compression and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def union(self, a: int, b: int) -> bool:
        ra, rb = _find(self.parent, a), _find(self.parent, b)
        if ra == rb:
            return False
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return True

    def roots(self) -> npt.NDArray[np.int64]:
        """Root of every element (vectorised pointer jumping)."""
        p = self.parent
        while True:
            nxt = p[p]
            if np.array_equal(nxt, p):
                break
            p = nxt
        self.parent = p.copy()
        return p
