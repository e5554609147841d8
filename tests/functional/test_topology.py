"""h0_persistence / h0_total_persistence: oracles (ripser, scipy single linkage), invariances, validation."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from ripser import ripser
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import pdist, squareform

from shiftlab.functional import _mst, topology
from shiftlab.functional.topology import H0Diagram, h0_persistence, h0_total_persistence


def _ripser_deaths(x: np.ndarray, metric: str) -> np.ndarray:
    """ripser's finite H0 deaths, padded with the zero-length classes it omits (duplicates)."""
    finite = ripser(x, maxdim=0, metric=metric)["dgms"][0][:-1, 1]
    return np.sort(np.concatenate([np.zeros(x.shape[0] - 1 - finite.size), finite]))


def _blobs(rng: np.random.Generator, n_blobs: int, per: int, d: int, spread: float) -> np.ndarray:
    """Well separated clusters larger than the 16-neighbour cache: every later round must rescan."""
    centres = rng.normal(size=(n_blobs, d)) * spread
    x = np.concatenate([c + rng.normal(size=(per, d)) for c in centres])
    return x[rng.permutation(x.shape[0])]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize(("n", "d"), [(2, 1), (3, 2), (17, 3), (60, 5), (400, 16), (1200, 64)])
def test_deaths_match_ripser_and_linkage_matches_scipy(
    rng: np.random.Generator, n: int, d: int, metric: str
) -> None:
    x = rng.normal(size=(n, d))
    diagram = h0_persistence(x, metric=metric)
    z = linkage(x, "single", metric=metric)
    # scipy's dendrogram exactly (ids and sizes), heights to round-off
    np.testing.assert_array_equal(diagram.linkage.numpy()[:, [0, 1, 3]], z[:, [0, 1, 3]])
    np.testing.assert_allclose(diagram.linkage.numpy()[:, 2], z[:, 2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(diagram.deaths.numpy(), z[:, 2], rtol=1e-12, atol=1e-12)
    # ripser works in float32
    np.testing.assert_allclose(diagram.deaths.numpy(), _ripser_deaths(x, metric), rtol=1e-5, atol=1e-6)
    assert diagram.n_points == n and diagram.metric == metric
    assert diagram.deaths.dtype == torch.float64 and diagram.merge_order.shape == (n - 1, 2)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("tile_factor", [1, 7, 1000])
def test_clustered_data_and_any_tile_size(
    rng: np.random.Generator, metric: str, tile_factor: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = _blobs(rng, n_blobs=6, per=70, d=4, spread=12.0)
    n = x.shape[0]
    scanned: list[int] = []
    original = _mst._shifted_sq_distances

    def counting(rows: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        scanned.append(rows.numel())
        return original(rows, *args)

    monkeypatch.setattr(_mst, "_shifted_sq_distances", counting)
    diagram = h0_persistence(x, metric=metric, tile_size=n * tile_factor)
    assert sum(scanned) > n  # the kNN pass covers n rows: later rounds rescanned stale points
    z = linkage(x, "single", metric=metric)
    np.testing.assert_array_equal(diagram.linkage.numpy()[:, [0, 1, 3]], z[:, [0, 1, 3]])
    np.testing.assert_allclose(diagram.deaths.numpy(), z[:, 2], rtol=1e-12, atol=1e-12)


def test_float32_input_matches_float64_to_single_precision(rng: np.random.Generator) -> None:
    x = rng.normal(size=(500, 32))
    d64 = h0_persistence(x).deaths
    d32 = h0_persistence(torch.from_numpy(x.astype(np.float32))).deaths
    np.testing.assert_allclose(d32.numpy(), d64.numpy(), rtol=1e-5)


def test_dense_distances_use_prim_and_agree_with_points(rng: np.random.Generator) -> None:
    x = rng.normal(size=(80, 6))
    for metric in ("euclidean", "cosine", "cityblock"):
        d = squareform(pdist(x, metric))
        diagram = h0_persistence(distances=d)
        z = linkage(pdist(x, metric), "single")
        assert diagram.metric == "precomputed"
        np.testing.assert_array_equal(diagram.linkage.numpy()[:, [0, 1, 3]], z[:, [0, 1, 3]])
        np.testing.assert_allclose(diagram.deaths.numpy(), z[:, 2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        h0_persistence(distances=squareform(pdist(x))).deaths.numpy(),
        h0_persistence(x).deaths.numpy(),
        atol=1e-12,
    )


def test_duplicates_give_zero_deaths_and_ties_are_resolved(rng: np.random.Generator) -> None:
    x = np.repeat(rng.normal(size=(25, 3)), 3, axis=0)
    diagram = h0_persistence(x)
    assert int((diagram.deaths == 0).sum()) == 50
    np.testing.assert_allclose(diagram.deaths.numpy(), np.sort(linkage(x, "single")[:, 2]), atol=1e-12)
    grid = np.stack(np.meshgrid(np.arange(12.0), np.arange(9.0)), -1).reshape(-1, 2)
    g = h0_persistence(grid)
    assert torch.equal(g.deaths, torch.ones(grid.shape[0] - 1, dtype=torch.float64))
    assert g.linkage[-1, 3] == grid.shape[0]


def test_points_on_a_line_die_at_the_sorted_gaps(rng: np.random.Generator) -> None:
    v = rng.normal(size=50)
    diagram = h0_persistence(v[:, None])
    np.testing.assert_allclose(diagram.deaths.numpy(), np.sort(np.diff(np.sort(v))), atol=1e-12)
    assert diagram.total_persistence == pytest.approx(v.max() - v.min(), abs=1e-12)


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 40),
    d=st.integers(1, 5),
    metric=st.sampled_from(["euclidean", "cosine"]),
)
def test_invariant_to_relabelling_and_rigid_motion(seed: int, n: int, d: int, metric: str) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    base = h0_persistence(x, metric=metric)
    perm = rng.permutation(n)
    relabelled = h0_persistence(x[perm], metric=metric)
    np.testing.assert_allclose(relabelled.deaths.numpy(), base.deaths.numpy(), atol=1e-10)
    # the merge edges are the same edges under the relabelling (no ties in continuous data; in one
    # dimension every cosine distance is 0 or 2, so the tree is not unique there)
    if metric == "cosine" and d == 1:
        return
    edges = {tuple(sorted((int(perm[a]), int(perm[b])))) for a, b in relabelled.merge_order.tolist()}
    assert edges == {tuple(e) for e in base.merge_order.tolist()}
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    moved = x @ q  # rotations/reflections preserve both metrics; translation only the euclidean one
    if metric == "euclidean":
        moved = moved + rng.normal(size=d) * 10
    np.testing.assert_allclose(
        h0_persistence(moved, metric=metric).deaths.numpy(), base.deaths.numpy(), atol=1e-9
    )


def test_cosine_is_scale_invariant_per_point(rng: np.random.Generator) -> None:
    x = rng.normal(size=(40, 4))
    scaled = x * rng.uniform(0.1, 10, size=(40, 1))
    np.testing.assert_allclose(
        h0_persistence(scaled, metric="cosine").deaths.numpy(),
        h0_persistence(x, metric="cosine").deaths.numpy(),
        atol=1e-12,
    )


def test_diagram_helpers() -> None:
    diagram = h0_persistence([[0.0], [1.0], [3.0], [7.0]])
    assert isinstance(diagram, H0Diagram)
    assert [diagram.betti0(t) for t in (0.0, 1.0, 1.5, 2.5, 4.0)] == [4, 3, 3, 2, 1]
    pairs = diagram.pairs()
    assert pairs.shape == (4, 2) and torch.isinf(pairs[-1, 1]) and bool((pairs[:, 0] == 0).all())
    assert diagram.total_persistence == 7.0


def test_total_persistence_batched_matches_single(rng: np.random.Generator) -> None:
    x = torch.from_numpy(rng.normal(size=(30, 2, 7, 3)))
    d = torch.cdist(x, x)
    batched = h0_total_persistence(d)
    assert batched.shape == (30, 2)
    for i in range(30):
        for j in range(2):
            assert float(batched[i, j]) == pytest.approx(
                h0_persistence(distances=d[i, j]).total_persistence, abs=1e-12
            )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"points": np.zeros((3, 2)), "distances": np.zeros((3, 3))}, "exactly one"),
        ({"points": np.zeros((1, 2))}, "at least 2 rows"),
        ({"points": np.zeros(4)}, "2 dimension"),
        ({"points": np.zeros((4, 0))}, "at least one column"),
        ({"points": np.array([[0.0, np.nan], [1.0, 1.0]])}, "non-finite"),
        ({"points": np.ones((3, 2)), "metric": "manhattan"}, "valid metrics: euclidean, cosine"),
        ({"points": np.array([[0.0, 0.0], [1.0, 1.0]]), "metric": "cosine"}, "zero vectors"),
        ({"points": np.ones((10, 2)), "tile_size": 5}, "tile_size must be >= 10"),
        ({"distances": np.zeros((3, 3)), "metric": "cosine"}, "points only"),
        ({"distances": np.zeros((3, 4))}, "square"),
        ({"distances": np.array([[0.0, 1.0], [2.0, 0.0]])}, "symmetric"),
        ({"distances": np.array([[1.0, 1.0], [1.0, 0.0]])}, "zero diagonal"),
        ({"distances": np.array([[0.0, -1.0], [-1.0, 0.0]])}, "nonnegative"),
    ],
)
def test_bad_input_is_rejected_before_work(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        h0_persistence(**kwargs)  # type: ignore[arg-type]


def test_bad_batched_input_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., n, n\)"):
        h0_total_persistence(torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match="symmetric"):
        h0_total_persistence(torch.tensor([[[0.0, 1.0], [3.0, 0.0]]]))


def test_docstring_examples() -> None:
    result = doctest.testmod(topology, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(rng: np.random.Generator) -> None:
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    cpu = h0_persistence(x)
    gpu = h0_persistence(torch.from_numpy(x).cuda())
    np.testing.assert_allclose(gpu.deaths.numpy(), cpu.deaths.numpy(), rtol=1e-5)
