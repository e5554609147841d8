"""Per-sample gradients of a model's loss and their Gram matrix, without a Python loop over samples.

For a model with trainable parameters :math:`\\theta \\in \\mathbb{R}^P` and per-sample losses
:math:`\\ell_i(\\theta)`, the per-sample gradients :math:`g_i = \\nabla_\\theta \\ell_i` form
:math:`G \\in \\mathbb{R}^{N \\times P}`. The empirical Fisher :math:`F = G^\\top G / N` (:math:`P \\times P`)
and the Gram matrix :math:`K = G G^\\top` (:math:`N \\times N`) share their nonzero eigenvalues up to the
factor :math:`N`, so spectral summaries of :math:`F` (trace, effective rank) come from :math:`K`.

Two ways to get :math:`K`:

- :func:`per_sample_gradients` with :mod:`torch.func` (``vmap`` over ``grad`` of a single-sample
  ``functional_call``, in chunks), for any model; memory :math:`O(NP)` for :math:`G`.
- the Gram identity for ``nn.Linear`` layers: a sample's weight gradient is the outer product
  :math:`\\delta_i a_i^\\top` of the gradient at the layer output and the layer input, hence
  :math:`\\langle g_i, g_j\\rangle = (\\delta_i^\\top \\delta_j)(a_i^\\top a_j)` (plus
  :math:`\\delta_i^\\top \\delta_j` for the bias): one forward and one backward pass, and :math:`G` is never
  formed; memory :math:`O(N^2 + N \\cdot \\text{width})`.

The model is never modified: both run on a deep copy in eval mode (dropout off, BatchNorm on its running
statistics), so that each sample's loss depends on that sample alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from shiftlab.functional._checks import _check_int
from shiftlab.functional._convert import ArrayLike, as_tensor

__all__ = ["per_sample_gradient_gram", "per_sample_gradients"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _prepare(
    model: nn.Module, inputs: ArrayLike, targets: ArrayLike
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    device, dtype = params[0].device, params[0].dtype
    # Tensors keep integer dtypes (token ids, class indices); everything else goes through as_tensor.
    x = inputs if isinstance(inputs, torch.Tensor) else as_tensor(inputs, name="inputs")
    t = targets if isinstance(targets, torch.Tensor) else as_tensor(targets, name="targets")
    for name, v in (("inputs", x), ("targets", t)):
        if v.ndim == 0 or v.shape[0] == 0:
            raise ValueError(f"{name} must have a leading sample dimension with at least one sample")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
    t = t.to(device)
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"targets must have one entry per input ({x.shape[0]}); got shape {tuple(t.shape)}")
    return copy.deepcopy(model).eval(), x, t


def per_sample_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: ArrayLike,
    targets: ArrayLike,
    *,
    chunk_size: int | None = None,
) -> dict[str, torch.Tensor]:
    r"""Gradients :math:`g_i = \nabla_\theta\, \ell(f_\theta(x_i), t_i)` of every sample, by ``vmap(grad)``.

    ``loss_fn(output, target)`` is called on a batch of one sample (``output`` of shape ``(1, ...)``) and
    must return a scalar, e.g. :func:`torch.nn.functional.cross_entropy`. Gradients are taken with
    respect to the parameters with ``requires_grad=True``, on a deep copy of ``model`` in eval mode.

    Parameters
    ----------
    model
        Any module whose forward takes a batch of inputs.
    loss_fn
        Per-batch loss returning a scalar.
    inputs
        Shape ``(N, ...)``.
    targets
        Shape ``(N, ...)``; tensors keep their dtype (class indices stay integer).
    chunk_size
        Samples per vectorised chunk (bounds the memory of intermediate activations); ``None`` for all.

    Returns
    -------
    dict of str to torch.Tensor
        Parameter name to per-sample gradients of shape ``(N, *parameter.shape)``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(3, 2)
    >>> grads = per_sample_gradients(model, nn.functional.cross_entropy, torch.randn(5, 3),
    ...                              torch.tensor([0, 1, 1, 0, 1]))
    >>> {name: tuple(g.shape) for name, g in grads.items()}
    {'weight': (5, 2, 3), 'bias': (5, 2)}
    """
    from torch.func import functional_call, grad, vmap

    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}")
    if chunk_size is not None:
        chunk_size = _check_int(chunk_size, "chunk_size", low=1)
    net, x, t = _prepare(model, inputs, targets)
    params = {name: p.detach() for name, p in net.named_parameters() if p.requires_grad}
    frozen = {name: p.detach() for name, p in net.named_parameters() if not p.requires_grad}
    buffers = {name: b.detach() for name, b in net.named_buffers()}

    def sample_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, ({**p, **frozen}, buffers), (xi.unsqueeze(0),))
        loss = loss_fn(out, ti.unsqueeze(0))
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise ValueError("loss_fn must return a scalar tensor for a batch of one sample")
        return loss

    grads: dict[str, Any] = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(params, x, t)
    return dict(grads)


def _gram_from_gradients(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    first = next(iter(grads.values()))
    n = first.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=first.device)
    for g in grads.values():
        # the matmul runs in the gradients' own dtype (float64 would double its N^2 P cost and copy G);
        # blocks are accumulated in float64
        flat = g.reshape(n, -1)
        gram += (flat @ flat.T).to(torch.float64)
    return gram


def _linear_gram(net: nn.Module, loss_fn: LossFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from torch.func import vmap

    linears = {name: m for name, m in net.named_modules() if isinstance(m, nn.Linear)}
    owned = {
        f"{name}.{leaf}" if name else leaf
        for name, m in linears.items()
        for leaf, _ in m.named_parameters(recurse=False)
    }
    others = [name for name, p in net.named_parameters() if p.requires_grad and name not in owned]
    if others:
        raise ValueError(
            "the Gram identity covers nn.Linear weights and biases only; these trainable parameters are "
            f"not in an nn.Linear: {others}. Use method='vmap'"
        )
    acts: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in linears}
    handles = []

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if args[0].ndim != 2:
                raise ValueError(
                    f"the Gram identity needs 2-D (batch, features) inputs to nn.Linear; layer {name!r} got "
                    f"shape {tuple(args[0].shape)}. Use method='vmap'"
                )
            acts[name].append(args[0].detach())
            output.register_hook(lambda g: outs[name].append(g.detach()))

        return hook

    for name, module in linears.items():
        handles.append(module.register_forward_hook(make_hook(name)))
    try:
        output = net(x)
        losses = vmap(lambda o, ti: loss_fn(o.unsqueeze(0), ti.unsqueeze(0)))(output, t)
        if losses.shape != (x.shape[0],):
            raise ValueError("loss_fn must return a scalar tensor for a batch of one sample")
        losses.sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    n = x.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for name, module in linears.items():
        if len(acts[name]) > 1 or len(outs[name]) > 1:
            raise ValueError(
                f"layer {name!r} is called {len(acts[name])} times per forward pass (shared weights): the "
                "Gram identity needs one call per layer. Use method='vmap'"
            )
        if not acts[name] or not outs[name]:
            continue  # the layer does not influence the loss: zero gradient
        a = acts[name][0].to(torch.float64)
        d = outs[name][0].to(torch.float64)
        delta_gram = d @ d.T
        if module.weight.requires_grad:
            gram += delta_gram * (a @ a.T)
        if module.bias is not None and module.bias.requires_grad:
            gram += delta_gram
    return gram


def per_sample_gradient_gram(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: ArrayLike,
    targets: ArrayLike,
    *,
    method: Literal["vmap", "linear"] = "vmap",
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Gram matrix :math:`K_{ij} = \langle g_i, g_j\rangle` of per-sample loss gradients, shape ``(N, N)``.

    ``method="vmap"`` sums :math:`G_p G_p^\top` over parameters from :func:`per_sample_gradients` (any
    model; materialises :math:`G`). ``method="linear"`` uses the Gram identity of the module docstring,

    .. math::

        K = \sum_{\text{Linear } l} (\Delta_l \Delta_l^\top) \odot (A_l A_l^\top + \mathbb{1}_{\text{bias}}),

    with :math:`A_l` the ``(N, d_in)`` layer inputs and :math:`\Delta_l` the ``(N, d_out)`` gradients of
    :math:`\sum_i \ell_i` at the layer outputs, from one batched forward and backward pass. It requires
    every trainable parameter to sit in an ``nn.Linear`` called once per forward on 2-D input, and raises
    otherwise. Both return float64; they agree to the round-off of the gradients' dtype (the vmap path
    multiplies in that dtype, so a float32 model's Gram has float32 round-off).

    Parameters
    ----------
    model, loss_fn, inputs, targets, chunk_size
        As for :func:`per_sample_gradients`.
    method
        ``"vmap"`` or ``"linear"``.

    Returns
    -------
    torch.Tensor
        Symmetric positive semi-definite ``(N, N)``, float64.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> x, t = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    >>> k_vmap = per_sample_gradient_gram(model, nn.functional.cross_entropy, x, t)
    >>> k_gram = per_sample_gradient_gram(model, nn.functional.cross_entropy, x, t, method="linear")
    >>> bool(torch.allclose(k_vmap, k_gram, rtol=1e-5, atol=1e-7))
    True
    """
    if method not in ("vmap", "linear"):
        raise ValueError(f"method must be 'vmap' or 'linear'; got {method!r}")
    if method == "vmap":
        return _gram_from_gradients(
            per_sample_gradients(model, loss_fn, inputs, targets, chunk_size=chunk_size)
        )
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable; got {type(loss_fn).__name__}")
    net, x, t = _prepare(model, inputs, targets)
    return _linear_gram(net, loss_fn, x, t)
