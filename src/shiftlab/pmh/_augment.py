"""Digit augmentations in plain torch: ``aug(x, generator) -> x'``, all randomness from ``generator``.

They model known, label-preserving nuisances of handwritten digits (a pen stroke one pixel off, a thicker
pen, a slightly larger or smaller digit) and feed the ``augmentation`` estimator (D3). Inputs are image
batches ``(n, C, H, W)`` (or ``(n, H, W)``); the output has the input's shape, dtype and device, and stays
inside the input's value range (every output pixel is a convex combination of input pixels and zeros).
Parameters other than ``x`` and ``generator`` are keyword-only; bind them with ``functools.partial``.
"""

from __future__ import annotations

import torch
from torch.nn.functional import affine_grid, grid_sample, max_pool2d, pad

from shiftlab.functional import as_tensor


def _images(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, bool]:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    t = as_tensor(x, name="x", ndim=(3, 4))
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.shape[-1] < 2 or t.shape[-2] < 2:
        raise ValueError(f"images must be at least 2x2 pixels; got shape {tuple(t.shape)}")
    squeezed = t.ndim == 3
    return (t.unsqueeze(1) if squeezed else t), squeezed


def _uniform(n: int, low: float, high: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


def random_shift(x: torch.Tensor, generator: torch.Generator, *, max_shift: int = 1) -> torch.Tensor:
    r"""Translate each image by a random non-zero integer offset, filling uncovered pixels with 0.

    The offset :math:`(\Delta_y, \Delta_x)` is uniform over :math:`\{-m..m\}^2 \setminus \{(0, 0)\}` with
    :math:`m` = ``max_shift``: :math:`x'[i, j] = x[i - \Delta_y, j - \Delta_x]` (0 outside the image), no
    wrap-around.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(1, 1, 3, 3); x[0, 0, 1, 1] = 1.0
    >>> y = random_shift(x, torch.Generator().manual_seed(0))
    >>> y.sum().item(), y[0, 0, 1, 1].item()
    (1.0, 0.0)
    """
    images, squeezed = _images(x, generator)
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 1:
        raise ValueError(f"max_shift must be an int >= 1; got {max_shift!r}")
    h, w = images.shape[-2:]
    if max_shift >= min(h, w):
        raise ValueError(f"max_shift={max_shift} must be smaller than the image side {min(h, w)}")
    offsets = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]
    offsets.remove((0, 0))
    choice = torch.randint(len(offsets), (images.shape[0],), generator=generator, device=generator.device)
    choice = choice.to(images.device)
    m = max_shift
    padded = pad(images, (m, m, m, m))
    out = torch.empty_like(images)
    for k, (dy, dx) in enumerate(offsets):
        rows = choice == k
        if bool(rows.any()):
            out[rows] = padded[rows, :, m - dy : m - dy + h, m - dx : m - dx + w]
    return out.squeeze(1) if squeezed else out


def thicken_strokes(
    x: torch.Tensor, generator: torch.Generator, *, strength: tuple[float, float] = (0.5, 1.0)
) -> torch.Tensor:
    r"""Thicker strokes: blend each image with its 3×3 grey-scale dilation (max-pool, stride 1).

    :math:`x' = (1 - a)\,x + a \max_{3\times 3}(x)` with :math:`a \sim U(\text{strength})` per image,
    ``0 <= low <= high <= 1``. Assumes ink is bright on a dark background (as MNIST and UCI digits).

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1.0
    >>> y = thicken_strokes(x, torch.Generator().manual_seed(0), strength=(1.0, 1.0))
    >>> int(y.sum().item())
    9
    """
    images, squeezed = _images(x, generator)
    low, high = strength
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"strength must satisfy 0 <= low <= high <= 1; got {strength!r}")
    dilated = max_pool2d(images, kernel_size=3, stride=1, padding=1)
    a = _uniform(images.shape[0], low, high, generator, images).view(-1, 1, 1, 1)
    out = images + a * (dilated - images)
    return out.squeeze(1) if squeezed else out


def random_rescale(
    x: torch.Tensor, generator: torch.Generator, *, scale: tuple[float, float] = (0.85, 1.15)
) -> torch.Tensor:
    r"""Zoom each image about its centre by a random factor, bilinear, zeros outside.

    With :math:`s \sim U(\text{scale})` per image and normalised coordinates :math:`u \in [-1, 1]^2`,
    :math:`x'(u) = x(u / s)`: :math:`s > 1` enlarges the digit, :math:`s < 1` shrinks it.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    >>> y = random_rescale(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    >>> torch.allclose(x, y, atol=1e-6)
    True
    """
    images, squeezed = _images(x, generator)
    low, high = scale
    if not 0.0 < low <= high:
        raise ValueError(f"scale must satisfy 0 < low <= high; got {scale!r}")
    s = _uniform(images.shape[0], low, high, generator, images)
    theta = torch.zeros(images.shape[0], 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = 1.0 / s
    theta[:, 1, 1] = 1.0 / s
    grid = affine_grid(theta, list(images.shape), align_corners=False)
    out = grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(1) if squeezed else out


#: The three digit nuisances of the MNIST → UCI digits study, with their default parameters.
DIGIT_AUGMENTATIONS = (random_shift, thicken_strokes, random_rescale)
