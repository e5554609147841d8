"""cluster_bootstrap: weighted ranks and partial correlations equal the row-repeated sample (scipy, pingouin);
the weights reproduce paired_bootstrap_ci's draws; whole clusters are resampled."""

from __future__ import annotations

import doctest
import importlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shiftlab.functional import paired_bootstrap_ci, partial_correlation
from shiftlab.functional.cluster_bootstrap import (
    cluster_bootstrap,
    cluster_bootstrap_weights,
    weighted_correlations,
    weighted_partial_correlation,
    weighted_rankdata,
)

module = importlib.import_module("shiftlab.functional.cluster_bootstrap")  # the function shadows the name


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small tensors: one intra-op thread avoids thread-pool contention on a shared CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_docstring_examples() -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@given(
    values=arrays(np.float64, st.integers(2, 25), elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0, 3.0, 7.5])),
    seed=st.integers(0, 10_000),
)
def test_weighted_ranks_are_the_ranks_of_the_repeated_sample(values: np.ndarray, seed: int) -> None:
    counts = np.random.default_rng(seed).integers(0, 4, size=values.shape[0])
    counts[0] = max(counts[0], 1)
    expanded = np.repeat(values, counts)
    ref = scipy.stats.rankdata(expanded)
    ours = weighted_rankdata(values, counts.astype(float)).numpy()
    # every kept copy of value i has the rank of i
    np.testing.assert_allclose(np.repeat(ours, counts), ref, atol=1e-12)
    np.testing.assert_allclose(weighted_rankdata(values).numpy(), scipy.stats.rankdata(values), atol=1e-12)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_weighted_partial_correlation_equals_pingouin_on_the_repeated_sample(method: str, k: int) -> None:
    rng = np.random.default_rng(k)
    n = 35
    z = rng.normal(size=(n, k))
    x = z @ rng.normal(size=k) + rng.normal(size=n)
    y = 0.4 * x + z @ rng.normal(size=k) + rng.standard_t(4, size=n)
    counts = rng.integers(0, 3, size=n)
    idx = np.repeat(np.arange(n), counts)
    cols = [f"z{j}" for j in range(k)]
    df = pd.DataFrame(np.column_stack([x[idx], y[idx], z[idx]]), columns=["x", "y", *cols])
    ref = float(pg.partial_corr(data=df, x="x", y="y", covar=cols, method=method)["r"].iloc[0])
    ours = weighted_partial_correlation(x, y, z, counts.astype(float), method=method)  # type: ignore[arg-type]
    assert float(ours) == pytest.approx(ref, abs=1e-10)
    unit = weighted_partial_correlation(x, y, z, method=method)  # type: ignore[arg-type]
    assert float(unit) == pytest.approx(partial_correlation(x, y, z, method=method).r, abs=1e-12)  # type: ignore[arg-type]


def test_batches_broadcast_like_a_loop(rng: np.random.Generator) -> None:
    n, m, b = 30, 4, 6
    x = torch.as_tensor(rng.normal(size=(m, n)))
    y = torch.as_tensor(rng.normal(size=n))
    z = torch.as_tensor(rng.normal(size=(n, 2)))
    w = torch.as_tensor(rng.integers(0, 3, size=(b, 1, n)).astype(float))
    both = weighted_correlations(x, y, z, w, method="spearman")
    assert both.raw.shape == (b, m) and both.partial.shape == (b, m)
    for i in range(b):
        for j in range(m):
            expect = weighted_partial_correlation(x[j], y, z, w[i, 0], method="spearman")
            raw = weighted_partial_correlation(x[j], y, None, w[i, 0], method="spearman")
            assert float(both.partial[i, j]) == pytest.approx(float(expect), abs=1e-12)
            assert float(both.raw[i, j]) == pytest.approx(float(raw), abs=1e-12)


def test_undefined_correlations_are_nan(rng: np.random.Generator) -> None:
    z = rng.normal(size=(20, 1))
    y = rng.normal(size=20)
    assert torch.isnan(weighted_partial_correlation(2 * z[:, 0] + 1, y, z))  # x in the span of z
    w = np.zeros(20)
    w[:3] = 1.0
    x = rng.normal(size=20)
    x[:3] = 5.0
    assert torch.isnan(weighted_partial_correlation(x, y, None, w))  # x constant on the drawn rows


def test_gradient_reaches_the_inputs(rng: np.random.Generator) -> None:
    x = torch.tensor(rng.normal(size=12), dtype=torch.float64, requires_grad=True)
    y = torch.tensor(rng.normal(size=12), dtype=torch.float64)
    z = torch.tensor(rng.normal(size=(12, 2)), dtype=torch.float64)
    w = torch.tensor(rng.integers(1, 3, size=12).astype(float))
    assert torch.autograd.gradcheck(lambda v: weighted_partial_correlation(v, y, z, w), (x,))


def test_singleton_clusters_reproduce_paired_bootstrap_draws() -> None:
    n, b = 17, 300

    def counts(idx: torch.Tensor) -> torch.Tensor:
        rows = idx.long()
        return torch.zeros(rows.shape, dtype=torch.float64).scatter_add_(1, rows, torch.ones_like(idx))

    ref = paired_bootstrap_ci(counts, torch.arange(n, dtype=torch.float64), n_boot=b, seed=11).distribution
    ours = cluster_bootstrap_weights(torch.arange(n), b, seed=11)
    assert torch.equal(ours, ref)


def test_whole_clusters_are_drawn() -> None:
    labels = np.repeat([3, 1, 2, 0], [2, 5, 1, 4])
    w = cluster_bootstrap_weights(labels, 200, seed=0)
    for g in np.unique(labels):
        block = w[:, labels == g]
        assert torch.equal(block, block[:, :1].expand_as(block))
    # each resample draws as many clusters as there are
    per_cluster = torch.stack([w[:, labels == g][:, 0] for g in np.unique(labels)], dim=1)
    assert torch.equal(per_cluster.sum(dim=1), torch.full((200,), 4.0, dtype=torch.float64))


def _weighted_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w * x[..., 0]).sum(-1) / w.sum(-1)


def test_cluster_bootstrap_sees_the_dependence_that_a_row_bootstrap_misses() -> None:
    # 40 clusters of 10 runs sharing a strong cluster effect: the standard error of the mean is about
    # sd(cluster mean) / sqrt(40); a row bootstrap pretends to have 400 independent runs.
    rng = np.random.default_rng(5)
    g, size = 40, 10
    labels = np.repeat(np.arange(g), size)
    x = rng.normal(size=g)[labels] + 0.3 * rng.normal(size=g * size)
    analytic = np.std(x.reshape(g, size).mean(axis=1), ddof=1) / np.sqrt(g)
    clustered = cluster_bootstrap(_weighted_mean, x[:, None], clusters=labels, n_boot=2000, seed=0)
    rows = cluster_bootstrap(_weighted_mean, x[:, None], clusters=np.arange(g * size), n_boot=2000, seed=0)
    assert float(clustered.distribution.std()) == pytest.approx(analytic, rel=0.15)
    assert float(rows.distribution.std()) < 0.5 * analytic
    assert float(clustered.estimate) == pytest.approx(x.mean(), abs=1e-12)


def test_batch_size_does_not_change_the_result(rng: np.random.Generator) -> None:
    x = rng.normal(size=(30, 1))
    labels = np.arange(30) // 3
    a = cluster_bootstrap(_weighted_mean, x, clusters=labels, n_boot=100, seed=3)
    b = cluster_bootstrap(_weighted_mean, x, clusters=labels, n_boot=100, seed=3, batch_size=7)
    assert torch.equal(a.distribution, b.distribution)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cluster_bootstrap_weights([1, 1, 1], 10), "at least 2 distinct clusters"),
        (lambda: weighted_rankdata([1.0, 2.0], [1.0, -1.0]), "nonnegative"),
        (lambda: weighted_partial_correlation([1.0, 2.0, 3.0], [1.0, 2.0]), "same number of observations"),
        (lambda: weighted_partial_correlation([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], np.ones((3, 1))), "k \\+ 3"),
        (lambda: weighted_partial_correlation([1.0, np.nan, 3.0], [1.0, 2.0, 4.0]), "non-finite"),
        (
            lambda: weighted_partial_correlation([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], None, [0.0, 0.0, 0.0]),
            "positive",
        ),
        (
            lambda: cluster_bootstrap(_weighted_mean, np.ones((4, 1)), clusters=[0, 0, 1], n_boot=100),
            "one label per row",
        ),
        (
            lambda: cluster_bootstrap(_weighted_mean, np.ones((4, 1)), clusters=[0, 0, 1, 1], n_boot=10),
            "too small",
        ),
    ],
)
def test_bad_input_raises(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
