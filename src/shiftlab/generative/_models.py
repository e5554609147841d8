"""Small generator / critic pairs: MLPs for low-dimensional data, convolutional nets for 8x8 and 28x28 images.

Every model carries ``latent_dim`` (generators) or ``data_shape`` so that the perturbers and the
pretraining loop can size their inputs without being told twice. None uses batch normalisation: the
gradient penalty and the per-sample Jacobians of the perturbers need each output to depend on its own
input only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConvCritic", "ConvGenerator", "Critic", "Generator"]

#: Image sides the convolutional pair supports (two stride-2 stages need a side divisible by 4).
IMAGE_RESOLUTIONS = (8, 28)


def _check_dim(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def _mlp(sizes: Sequence[int], negative_slope: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(negative_slope))
    return nn.Sequential(*layers)


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(hidden)
    if not sizes:
        raise ValueError("hidden must list at least one layer width")
    for width in sizes:
        _check_dim(width, "every hidden width")
    return sizes


class Generator(nn.Module):
    """MLP generator :math:`G: \\mathbb R^k \\to \\mathbb R^d` (LeakyReLU hidden layers, linear output).

    Parameters
    ----------
    latent_dim
        :math:`k`, the latent dimension (latents are standard normal).
    data_dim
        :math:`d`, the output dimension.
    hidden
        Hidden layer widths.
    negative_slope
        LeakyReLU slope.

    Examples
    --------
    >>> g = Generator(latent_dim=2, data_dim=2, hidden=(16,))
    >>> g(torch.zeros(5, 2)).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        latent_dim: int = 2,
        data_dim: int = 2,
        hidden: Sequence[int] = (128, 128),
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        self.latent_dim = _check_dim(latent_dim, "latent_dim")
        self.data_dim = _check_dim(data_dim, "data_dim")
        self.data_shape: tuple[int, ...] = (self.data_dim,)
        self.net = _mlp((self.latent_dim, *_check_hidden(hidden), self.data_dim), negative_slope)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Critic(nn.Module):
    """MLP critic :math:`u: \\mathbb R^d \\to \\mathbb R` (no normalisation layers: per-sample penalty).

    Examples
    --------
    >>> Critic(data_dim=2, hidden=(16,))(torch.zeros(5, 2)).shape
    torch.Size([5])
    """

    def __init__(
        self, data_dim: int = 2, hidden: Sequence[int] = (128, 128), negative_slope: float = 0.2
    ) -> None:
        super().__init__()
        self.data_dim = _check_dim(data_dim, "data_dim")
        self.data_shape: tuple[int, ...] = (self.data_dim,)
        self.net = _mlp((self.data_dim, *_check_hidden(hidden), 1), negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1)).squeeze(-1)


def _check_resolution(resolution: int) -> int:
    if resolution not in IMAGE_RESOLUTIONS:
        raise ValueError(f"resolution must be one of {IMAGE_RESOLUTIONS}; got {resolution!r}")
    return resolution


class ConvGenerator(nn.Module):
    """Small convolutional generator for one-channel ``resolution x resolution`` images in ``[0, 1]``.

    Linear map to ``2c x r/4 x r/4`` features, two stride-2 transposed convolutions, sigmoid output.

    Parameters
    ----------
    latent_dim
        Latent dimension.
    resolution
        8 or 28.
    channels
        Width ``c`` of the last hidden stage.

    Examples
    --------
    >>> ConvGenerator(latent_dim=8, resolution=8, channels=8)(torch.zeros(3, 8)).shape
    torch.Size([3, 1, 8, 8])
    """

    def __init__(self, latent_dim: int = 16, resolution: int = 8, channels: int = 32) -> None:
        super().__init__()
        self.latent_dim = _check_dim(latent_dim, "latent_dim")
        self.resolution = _check_resolution(resolution)
        c = _check_dim(channels, "channels")
        self.data_shape = (1, resolution, resolution)
        self._base = resolution // 4
        self.project = nn.Sequential(nn.Linear(self.latent_dim, 2 * c * self._base**2), nn.LeakyReLU(0.2))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * c, c, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(c, 1, kernel_size=4, stride=2, padding=1),
            nn.Sigmoid(),
        )
        self._c = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).reshape(z.shape[0], 2 * self._c, self._base, self._base)
        return self.deconv(h)


class ConvCritic(nn.Module):
    """Convolutional critic for one-channel ``resolution x resolution`` images (no normalisation layers).

    Examples
    --------
    >>> ConvCritic(resolution=28, channels=8)(torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3])
    """

    def __init__(self, resolution: int = 8, channels: int = 32) -> None:
        super().__init__()
        self.resolution = _check_resolution(resolution)
        c = _check_dim(channels, "channels")
        self.data_shape = (1, resolution, resolution)
        side = resolution // 4
        self.features = nn.Sequential(
            nn.Conv2d(1, c, kernel_size=3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(2 * c * side * side, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = self.resolution
        if x.shape[1:] != (1, side, side):
            x = x.reshape(x.shape[0], 1, side, side)
        return self.head(self.features(x).flatten(1)).squeeze(-1)
