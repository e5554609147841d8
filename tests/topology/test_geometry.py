"""class_geometry: brute-force definitions, scipy cosine, hooks on a copy, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from torch import nn

from shiftlab.functional.topology import h0_persistence
from shiftlab.topology import class_distances, class_geometry, class_geometry_from_features, extract_features


def _data(seed: int, n: int = 90, c: int = 5, d: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    f = rng.normal(size=(c, d))[y] * 2 + rng.normal(size=(n, d))
    return f, y


def test_centroid_mode_is_cosine_between_class_means() -> None:
    f, y = _data(0)
    g = class_geometry_from_features(f, y)
    means = np.stack([f[y == k].mean(axis=0) for k in range(5)])
    np.testing.assert_allclose(g.distances.numpy(), cdist(means, means, "cosine"), atol=1e-12)
    np.testing.assert_allclose(g.directions.numpy(), means, atol=1e-12)
    assert g.h0 == pytest.approx(h0_persistence(means, metric="cosine").total_persistence, abs=1e-12)
    assert g.diagram.deaths.shape == (4,) and g.n_classes == 5 and g.counts.tolist() == [18] * 5


def test_samples_mode_is_mean_pairwise_cosine_distance_and_spread_is_within_class() -> None:
    f, y = _data(1)
    g = class_geometry_from_features(f, y, mode="samples")
    brute = np.array([[cdist(f[y == a], f[y == b], "cosine").mean() for b in range(5)] for a in range(5)])
    off = ~np.eye(5, dtype=bool)
    np.testing.assert_allclose(g.distances.numpy()[off], brute[off], atol=1e-12)
    assert bool((torch.diagonal(g.distances) == 0).all())
    for k in range(5):
        within = cdist(f[y == k], f[y == k], "cosine")
        m = within.shape[0]
        expected = within.sum() / (m * (m - 1))
        assert float(g.spread[k]) == pytest.approx(expected, abs=1e-12)
        assert float(class_geometry_from_features(f, y).spread[k]) == pytest.approx(expected, abs=1e-12)


def test_geometry_is_invariant_to_sample_order_and_feature_rotation() -> None:
    f, y = _data(2)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    base = class_geometry_from_features(f, y)
    for mode in ("centroid", "samples"):
        a = class_geometry_from_features(f, y, mode=mode)
        b = class_geometry_from_features(f[perm] @ q, y[perm], mode=mode)
        np.testing.assert_allclose(a.distances.numpy(), b.distances.numpy(), atol=1e-12)
    assert base.mode == "centroid"


def test_batched_class_distances_match_the_single_form() -> None:
    dirs = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    batched = class_distances(dirs, "centroid")
    for i in range(4):
        np.testing.assert_allclose(
            batched[i].numpy(), cdist(dirs[i].numpy(), dirs[i].numpy(), "cosine"), atol=1e-12
        )
    with pytest.raises(ValueError, match="valid modes: centroid, samples"):
        class_distances(dirs, "median")  # type: ignore[arg-type]


def test_features_come_from_the_named_layer_of_a_copy() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(40, 4)
    y = torch.arange(40) % 3
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    feats, labels = extract_features(net, batches, layer="1")
    assert torch.allclose(feats, torch.relu(net[0](x)).double().detach(), atol=1e-6)
    assert torch.equal(labels, y)
    logits, _ = extract_features(net, batches)
    assert torch.allclose(logits, net(x).double().detach(), atol=1e-6)
    g = class_geometry(net, batches, layer="0", mode="samples")
    assert g.distances.shape == (3, 3) and g.mode == "samples"
    # the caller's model: same parameters, still in training mode, no hook left behind
    assert net.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks for m in net.modules())


@pytest.mark.parametrize(
    ("features", "labels", "kwargs", "match"),
    [
        (np.ones((6, 2)), np.array([0, 0, 1, 1, 2, 2.5]), {}, "integers"),
        (np.ones((6, 2)), np.array([0, 0, 1, 1, 2, 2]), {"mode": "median"}, "valid modes"),
        (np.ones((6, 2)), np.array([0, 0, 0, 0, 0, 0]), {}, "at least 2 classes"),
        (np.ones((6, 2)), np.array([0, 0, 1, 1, 1, 2]), {}, "at least 2 samples"),
        (np.ones((6, 2)), np.array([0, 0, 1, 1, 2, 2]), {"n_classes": 4}, "classes \\[3\\]"),
        (np.ones((6, 2)), np.array([0, 0, 1, 1, 2, 5]), {"n_classes": 3}, "must lie in"),
        (np.ones((6, 2)), np.array([0, 0, 1, 1, 2]), {}, "shape"),
        (
            np.array([[1.0, 0], [-1, 0], [0, 1], [0, 1]]),
            np.array([0, 0, 1, 1]),
            {},
            "class mean feature is zero",
        ),
        (np.array([[0.0, 0], [1, 0], [0, 1], [0, 1]]), np.array([0, 0, 1, 1]), {"mode": "samples"}, "zero"),
        (np.full((4, 2), np.inf), np.array([0, 0, 1, 1]), {}, "non-finite"),
    ],
)
def test_bad_input(features: np.ndarray, labels: np.ndarray, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        class_geometry_from_features(features, labels, **kwargs)  # type: ignore[arg-type]


def test_unknown_layer_and_empty_loader() -> None:
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="valid layer names: 0"):
        extract_features(net, [(torch.zeros(2, 2), torch.zeros(2))], layer="fc9")
    with pytest.raises(ValueError, match="no batches"):
        extract_features(net, [])
    with pytest.raises(TypeError, match=r"nn\.Module"):
        extract_features(lambda t: t, [])  # type: ignore[arg-type]
