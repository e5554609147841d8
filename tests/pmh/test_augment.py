"""Digit augmentations: what each transformation does, its range, shape and generator contract."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn.functional import max_pool2d, pad

from shiftlab.pmh import DIGIT_AUGMENTATIONS, random_rescale, random_shift, thicken_strokes


def _digits(n: int = 12, side: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, side, side)
    x[:, :, 2:-2, 2:-2] = torch.rand(n, 1, side - 4, side - 4, generator=g)  # ink away from the border
    return x


@pytest.mark.parametrize("aug", DIGIT_AUGMENTATIONS, ids=lambda a: a.__name__)
def test_shape_dtype_range_and_seeding(aug) -> None:  # type: ignore[no-untyped-def]
    x = _digits()
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= float(x.max()) + 1e-6
    assert not torch.equal(a, x)
    three_d = aug(x[:, 0], torch.Generator().manual_seed(3))
    torch.testing.assert_close(three_d, a[:, 0])
    assert torch.equal(x, _digits())  # the input is not modified


def test_random_shift_is_a_nonzero_integer_translation_with_zero_fill() -> None:
    x = _digits()
    y = random_shift(x, torch.Generator().manual_seed(0), max_shift=2)
    padded = pad(x, (2, 2, 2, 2))
    for i in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(y[i], padded[i, :, 2 - dy : 10 - dy, 2 - dx : 10 - dx])
        ]
        assert matches and (0, 0) not in matches
    torch.testing.assert_close(y.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))  # ink kept (none at the border)


def test_thicken_strokes_moves_toward_the_dilation() -> None:
    x = _digits()
    dilated = max_pool2d(x, 3, stride=1, padding=1)
    y = thicken_strokes(x, torch.Generator().manual_seed(0))
    assert bool((y >= x - 1e-7).all()) and bool((y <= dilated + 1e-7).all())
    full = thicken_strokes(x, torch.Generator().manual_seed(0), strength=(1.0, 1.0))
    torch.testing.assert_close(full, dilated)
    none = thicken_strokes(x, torch.Generator().manual_seed(0), strength=(0.0, 0.0))
    torch.testing.assert_close(none, x)


def test_random_rescale_zooms_about_the_centre() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 6:10, 6:10] = 1.0  # a centred square
    coords = torch.arange(16.0) - 7.5
    radius2 = coords[:, None] ** 2 + coords[None, :] ** 2

    def spread(img: torch.Tensor) -> float:
        return float((img[0, 0] * radius2).sum() / img[0, 0].sum())

    bigger = random_rescale(x, torch.Generator().manual_seed(0), scale=(1.5, 1.5))
    smaller = random_rescale(x, torch.Generator().manual_seed(0), scale=(0.7, 0.7))
    assert spread(bigger) > spread(x) > spread(smaller)
    for img in (bigger, smaller):  # the centre of mass stays at the centre
        mass = img[0, 0].sum()
        assert abs(float((img[0, 0].sum(1) * coords).sum() / mass)) < 1e-4
        assert abs(float((img[0, 0].sum(0) * coords).sum() / mass)) < 1e-4
    same = random_rescale(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    torch.testing.assert_close(same, x, atol=1e-6, rtol=0)


def test_parameters_are_validated() -> None:
    x = _digits()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match=r"torch\.Generator"):
        random_shift(x, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_shift"):
        random_shift(x, g, max_shift=0)
    with pytest.raises(ValueError, match="smaller than the image side"):
        random_shift(x, g, max_shift=8)
    with pytest.raises(ValueError, match="strength"):
        thicken_strokes(x, g, strength=(0.5, 1.5))
    with pytest.raises(ValueError, match="scale"):
        random_rescale(x, g, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="dimension"):
        random_shift(x.reshape(12, -1), g)
    with pytest.raises(ValueError, match="non-finite"):
        thicken_strokes(x * float("nan"), g)


def test_partial_binds_parameters() -> None:
    aug = functools.partial(random_shift, max_shift=2)
    assert aug(_digits(), torch.Generator().manual_seed(0)).shape == (12, 1, 8, 8)
