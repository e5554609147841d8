"""Resolve layers by name and read or perturb their outputs with forward hooks.

Sites and measurement points are named with ``model.named_modules()`` names (``"features.2"``) or the
special names ``"input"`` (perturbation site) and ``"output"`` (measurement point). Names are resolved on
the model object actually being run, so an arm that trains a deep copy resolves its own layers.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

INPUT = "input"
OUTPUT = "output"


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name``; a ``ValueError`` lists the valid names otherwise.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> resolve_module(net, "2")
    Linear(in_features=3, out_features=2, bias=True)
    """
    if not isinstance(name, str):
        raise TypeError(f"layer name must be a str; got {type(name).__name__}")
    modules = dict(model.named_modules())
    modules.pop("", None)
    if name not in modules:
        valid = ", ".join(repr(n) for n in modules) or "(the model has no sub-modules)"
        raise ValueError(f"unknown layer {name!r}; valid names: {valid}")
    return modules[name]


def check_site_names(model: nn.Module, site: str, measure: str) -> None:
    """Validate a perturbation site and a measurement point before any work starts."""
    if site != INPUT:
        resolve_module(model, site)
    if measure != OUTPUT:
        resolve_module(model, measure)
    if site == measure:
        raise ValueError(
            f"the perturbation site and the measured layer are both {site!r}; measure above the site"
        )
    if site != INPUT and measure != OUTPUT:
        names = [n for n, _ in model.named_modules()]
        if names.index(site) > names.index(measure):
            raise ValueError(
                f"layer {measure!r} is registered before {site!r}; measure a layer above the site"
            )


def _first_tensor(output: object, name: str) -> torch.Tensor:
    """The layer's main tensor: the output itself, the first item of a tuple, or the first value of a
    mapping (a Hugging Face ``ModelOutput`` such as ``BaseModelOutput``, whose first field is the hidden
    state)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        first = next(iter(output.values()), None)
    elif isinstance(output, tuple | list) and output:
        first = output[0]
    else:
        first = None
    if isinstance(first, torch.Tensor):
        return first
    raise TypeError(
        f"layer {name!r} returns {type(output).__name__} without a leading tensor; "
        "use a layer returning a tensor, a tuple or a mapping whose first item is a tensor"
    )


def _with_first(output: object, value: torch.Tensor) -> object:
    """``output`` with its main tensor (see :func:`_first_tensor`) replaced by ``value``."""
    if isinstance(output, torch.Tensor):
        return value
    if isinstance(output, Mapping):
        replaced = copy.copy(output)
        replaced[next(iter(output))] = value  # type: ignore[index]
        return replaced
    assert isinstance(output, tuple | list)
    if hasattr(output, "_fields"):  # a namedtuple
        return type(output)(value, *output[1:])
    return type(output)([value, *output[1:]])


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; afterwards every sub-module gets back its own train/eval flag.

    ``model.train(was_training)`` would instead set one flag on all of them, and so change a model whose
    user had put, say, one Dropout in eval mode.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    >>> _ = net[1].eval()
    >>> with eval_mode(net):
    ...     net.training
    False
    >>> net.training, net[1].training
    (True, False)
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def capture(model: nn.Module, name: str) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of layer ``name`` (``"output"``: nothing to hook) into the yielded dict."""
    store: dict[str, torch.Tensor] = {}
    if name == OUTPUT:
        yield store
        return

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        store["value"] = _first_tensor(output, name)

    handle = resolve_module(model, name).register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextlib.contextmanager
def replace_output(
    model: nn.Module, name: str, transform: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Within the block, layer ``name`` returns ``transform(its output)``."""

    def hook(_module: nn.Module, _inputs: object, output: object) -> object:
        return _with_first(output, transform(_first_tensor(output, name)))

    handle = resolve_module(model, name).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def features(model: nn.Module, x: torch.Tensor, layer: str, *, batch_size: int = 1024) -> torch.Tensor:
    """Per-sample features at ``layer`` (``"input"``, ``"output"`` or a layer name), flattened to (n, d).

    Runs without gradients in the model's current train/eval mode, in batches.

    Examples
    --------
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> features(net, torch.zeros(5, 2, 2), "2").shape
    torch.Size([5, 3])
    """
    if layer == INPUT:
        return x.reshape(x.shape[0], -1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    chunks = []
    with torch.no_grad(), capture(model, layer) as store:
        for start in range(0, x.shape[0], batch_size):
            out = model(x[start : start + batch_size])
            value = out if layer == OUTPUT else store["value"]
            chunks.append(value.reshape(value.shape[0], -1))
    return torch.cat(chunks)


def site_shape(model: nn.Module, x: torch.Tensor, site: str) -> tuple[int, ...]:
    """Shape of one sample at ``site`` (runs one sample through the model for a layer site)."""
    if site == INPUT:
        return tuple(x.shape[1:])
    with torch.no_grad(), capture(model, site) as store:
        out = model(x[:1])
        value = out if site == OUTPUT else store["value"]
    return tuple(value.shape[1:])
