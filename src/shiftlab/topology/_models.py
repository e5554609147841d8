"""The three model families of the PH training pipeline: MLP, a small CNN, and PureFieldNet."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from shiftlab.functional._checks import _check_int

__all__ = ["MODEL_NAMES", "PureFieldNet", "build_model", "monitored_layers"]

MODEL_NAMES: tuple[str, ...] = ("mlp", "cnn", "purefield")


def _mlp(in_features: int, hidden: tuple[int, ...], n_classes: int) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = in_features
    for k, h in enumerate(hidden, start=1):
        layers[f"fc{k}"] = nn.Linear(width, h)
        layers[f"act{k}"] = nn.ReLU()
        width = h
    layers["head"] = nn.Linear(width, n_classes)
    return nn.Sequential(layers)


class PureFieldNet(nn.Module):
    r"""The original project's "two-engine" model, made explicit.

    Two MLP engines :math:`A, B: \mathbb{R}^{p} \to \mathbb{R}^{C}` of the same shape see the same input;
    the logits are the scaled difference of their outputs,

    .. math:: z(x) = e^{s}\,\big(A(x) - B(x)\big),

    with a learnable scalar :math:`s` (initialised at 0). Since both engines end in a linear layer,
    :math:`A(x) - B(x) = W_A h_A(x) - W_B h_B(x) = [W_A, -W_B]\,[h_A(x); h_B(x)]` (biases combined), so
    the model is exactly a two-branch MLP whose branches are concatenated before one linear head, with a
    learnable logit scale. Nothing else distinguishes it.

    Examples
    --------
    >>> net = PureFieldNet(in_features=64, n_classes=10, hidden=32)
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    """

    def __init__(self, in_features: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.engine_a = _mlp(in_features, (hidden,), n_classes)
        self.engine_b = _mlp(in_features, (hidden,), n_classes)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits :math:`e^{s}(A(x) - B(x))`."""
        return self.log_scale.exp() * (self.engine_a(x) - self.engine_b(x))


def _cnn(channels: int, n_classes: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(channels, 32, 3, padding=1),
            act1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, 3, padding=1),
            act2=nn.ReLU(),
            pool2=nn.AdaptiveAvgPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(256, 128),
            act3=nn.ReLU(),
            head=nn.Linear(128, n_classes),
        )
    )


def build_model(name: str, image_shape: tuple[int, int, int], n_classes: int, *, seed: int) -> nn.Module:
    """A freshly initialised model; the global RNG is left as it was.

    * ``"mlp"``: flatten, 256 ReLU, 128 ReLU, linear head;
    * ``"cnn"``: two 3x3 conv blocks (32, 64 channels) with pooling to 2x2, 128 ReLU, linear head; any
      image of side at least 2;
    * ``"purefield"``: :class:`PureFieldNet` with 128-unit engines.

    Examples
    --------
    >>> net = build_model("cnn", (1, 28, 28), 10, seed=0)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    _check_int(n_classes, "n_classes", low=2)
    _check_int(seed, "seed", low=0)
    channels, height, width = image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            return _mlp(channels * height * width, (256, 128), n_classes)
        if name == "cnn":
            if min(height, width) < 2:
                raise ValueError(f"the cnn needs images of side >= 2; got {height}x{width}")
            return _cnn(channels, n_classes)
        return PureFieldNet(channels * height * width, n_classes)


def monitored_layers(name: str) -> tuple[str, ...]:
    """Layer names the layer monitor follows for each model family (hidden layers and the head).

    Examples
    --------
    >>> monitored_layers("mlp")
    ('fc1', 'fc2', 'head')
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    return {
        "mlp": ("fc1", "fc2", "head"),
        "cnn": ("conv1", "conv2", "fc1", "head"),
        "purefield": ("engine_a.fc1", "engine_b.fc1", "engine_a.head", "engine_b.head"),
    }[name]
