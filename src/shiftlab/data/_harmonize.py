"""``harmonize_digits``: bring digit images to the UCI optdigits geometry and a common gain.

Why the geometry is optdigits' and why the gain is normalised per image is explained with the two-site
shift it serves, in :mod:`shiftlab.data._sites`.
"""

from __future__ import annotations

import math

import torch
from torch.nn.functional import affine_grid, avg_pool2d, grid_sample, interpolate

__all__ = ["harmonize_digits"]

#: Smallest and largest common resolution accepted by :func:`harmonize_digits` and :func:`two_site`.
MIN_RESOLUTION, MAX_RESOLUTION = 4, 64

#: Oversampled grid side used before block averaging: optdigits' 32x32 bitmaps.
_OVERSAMPLED_SIDE = 32

_CHUNK = 4096


def _check_images(images: torch.Tensor, resolution: int) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (n, 1, H, W), got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got {images.dtype}")
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise ValueError("images contain non-finite values")
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int)
        or not (MIN_RESOLUTION <= resolution <= MAX_RESOLUTION)
    ):
        raise ValueError(
            f"resolution must be an int in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution!r}"
        )


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Area-average when shrinking, bilinear when enlarging, identity when equal."""
    side = images.shape[-1]
    if images.shape[-2:] == (resolution, resolution):
        return images.clone()
    if side > resolution and images.shape[-2] > resolution:
        return interpolate(images, size=(resolution, resolution), mode="area")
    return interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)


def _ink_square(images: torch.Tensor) -> torch.Tensor:
    """Affine grids' theta (n, 2, 3) mapping the output square to each image's padded ink box."""
    n, _, height, width = images.shape
    ink = images[:, 0] > 0
    rows, cols = ink.any(dim=2), ink.any(dim=1)
    empty = ~rows.any(dim=1)
    # first / last True along each axis (argmax of a bool tensor gives the first maximum)
    r0 = rows.float().argmax(dim=1)
    r1 = height - 1 - rows.flip(1).float().argmax(dim=1)
    c0 = cols.float().argmax(dim=1)
    c1 = width - 1 - cols.flip(1).float().argmax(dim=1)
    # blank images keep their whole frame
    r0, c0 = torch.where(empty, 0, r0), torch.where(empty, 0, c0)
    r1, c1 = torch.where(empty, height - 1, r1), torch.where(empty, width - 1, c1)
    cy = (r0 + r1 + 1).to(torch.float32) / 2  # centre in pixel-edge coordinates
    cx = (c0 + c1 + 1).to(torch.float32) / 2
    side = torch.maximum(r1 - r0 + 1, c1 - c0 + 1).to(torch.float32)
    theta = torch.zeros(n, 2, 3, dtype=torch.float32)
    theta[:, 0, 0] = side / width
    theta[:, 0, 2] = 2 * cx / width - 1
    theta[:, 1, 1] = side / height
    theta[:, 1, 2] = 2 * cy / height - 1
    return theta


def _peak_normalize(images: torch.Tensor) -> torch.Tensor:
    peak = images.amax(dim=(1, 2, 3), keepdim=True)
    # A blank image has nothing to rescale; it stays all-zero rather than becoming NaN.
    return torch.where(peak > 0, images / torch.where(peak > 0, peak, 1.0), images)


def harmonize_digits(images: torch.Tensor, resolution: int = 8, *, crop_to_ink: bool = True) -> torch.Tensor:
    r"""Bring digit images to the optdigits geometry and a common gain.

    With ``crop_to_ink=True`` (MNIST-style inputs, digit inside a margin), for each image:

    1. ink box: the smallest rectangle holding every pixel > 0;
    2. square it: side :math:`L = \max(h, w)` around the box centre (aspect ratio kept; outside the
       frame counts as background 0);
    3. resample the square bilinearly to :math:`kR \times kR` with :math:`k = \max(1,
       \lceil 32 / R \rceil)`, then average non-overlapping :math:`k \times k` blocks to
       :math:`R \times R` (at :math:`R = 8`: a 32x32 grid and 4x4 block means, as optdigits did);

    with ``crop_to_ink=False`` (inputs that already fill their frame, such as UCI digits) the image
    is only resized: area averaging to shrink, bilinear interpolation to enlarge.

    Finally each image is divided by its maximum, :math:`x \leftarrow x / \max x`, so every
    non-blank image peaks at exactly 1 (a blank image stays 0).

    Parameters
    ----------
    images : torch.Tensor
        float (n, 1, H, W) in [0, 1], background 0.
    resolution : int
        Output side R, in [4, 64].
    crop_to_ink : bool
        Crop each image to its padded ink box first.

    Returns
    -------
    torch.Tensor
        float32 (n, 1, R, R) in [0, 1]; a new tensor.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(1, 1, 28, 28)
    >>> x[0, 0, 4:24, 12:16] = 0.5          # a 20x4 vertical bar with a margin, like an MNIST "1"
    >>> y = harmonize_digits(x, 8)
    >>> y.shape, float(y.max())
    (torch.Size([1, 1, 8, 8]), 1.0)
    >>> (y[0, 0].sum(dim=1) > 0).all().item()   # the bar now spans the full height, like optdigits
    True
    """
    _check_images(images, resolution)
    images = images.to(torch.float32)
    if not crop_to_ink:
        return _peak_normalize(_resize(images, resolution))
    k = max(1, math.ceil(_OVERSAMPLED_SIDE / resolution))
    out = torch.empty(images.shape[0], 1, resolution, resolution, dtype=torch.float32)
    for start in range(0, images.shape[0], _CHUNK):
        chunk = images[start : start + _CHUNK]
        grid = affine_grid(
            _ink_square(chunk), [chunk.shape[0], 1, k * resolution, k * resolution], align_corners=False
        )
        fine = grid_sample(chunk, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[start : start + _CHUNK] = avg_pool2d(fine, k) if k > 1 else fine
    return _peak_normalize(out)
