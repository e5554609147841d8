"""GroupMap, InstanceMap, LayerMap: drop-in GroupNorm / InstanceNorm / LayerNorm that match a target."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from shiftlab.functional._quantile_curves import sorted_quantiles
from shiftlab.functional.quantile import (
    GRAD_NAMES,
    TARGET_NAMES,
    Target,
    _group_map,
    knot_levels,
    target_quantiles,
)
from shiftlab.nn._target import MonotoneTarget

#: Backward surrogate used by default; chosen by the Fashion-MNIST comparison in
#: examples/groupmap_fashion.py (see the README section on quantile-mapping layers).
DEFAULT_GRAD = "ste"

LayerTarget = Target | MonotoneTarget


class _QuantileMap(nn.Module):
    """Shared state: target, tie noise, running knots, blend, backward surrogate."""

    running_knots: torch.Tensor | None
    num_batches_tracked: torch.Tensor | None
    weight: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(
        self,
        n_stat_groups: int,
        target: LayerTarget,
        eps: float,
        track_running_stats: bool,
        momentum: float | None,
        n_knots: int,
        grad: str,
        blend: float,
        seed: int,
        device: Any,
    ) -> None:
        super().__init__()
        if not isinstance(eps, int | float) or not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps (std of the tie-breaking noise) must be a finite number >= 0; got {eps!r}")
        if momentum is not None and (not isinstance(momentum, int | float) or not 0 < momentum <= 1):
            raise ValueError(f"momentum must be in (0, 1] or None (cumulative average); got {momentum!r}")
        if isinstance(n_knots, bool) or not isinstance(n_knots, int) or n_knots < 2:
            raise ValueError(f"n_knots must be an int >= 2; got {n_knots!r}")
        if grad not in GRAD_NAMES:
            raise ValueError(f"unknown grad {grad!r}; valid: {', '.join(GRAD_NAMES)}")
        if not isinstance(blend, int | float) or not 0 <= blend <= 1:
            raise ValueError(f"blend must be a number in [0, 1]; got {blend!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int; got {type(seed).__name__}")
        self.eps, self.momentum, self.n_knots = float(eps), momentum, n_knots
        self.grad, self.blend, self.seed = grad, float(blend), seed
        self.track_running_stats = bool(track_running_stats)
        self._set_target(target, device)
        self.generator = torch.Generator().manual_seed(seed) if eps > 0 else None
        if self.track_running_stats:
            start = target_quantiles("gaussian", knot_levels(n_knots)).to(torch.float32)
            self.register_buffer("running_knots", start.to(device).repeat(n_stat_groups, 1))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_knots", None)
            self.register_buffer("num_batches_tracked", None)

    def _set_target(self, target: LayerTarget, device: Any) -> None:
        self.target_module: MonotoneTarget | None = None
        self.target_tensor: torch.Tensor | None
        self.register_buffer("target_tensor", None)
        self.target_spec: str | Distribution | None = None
        if isinstance(target, str) and target == "learnable":
            self.target_module = MonotoneTarget(self.n_knots).to(device)
        elif isinstance(target, MonotoneTarget):
            self.target_module = target
        elif isinstance(target, torch.Tensor):
            target_quantiles(target, [0.5])  # validates shape, order, finiteness
            self.register_buffer("target_tensor", target.detach().clone().to(device))
        elif isinstance(target, str | Distribution):
            if isinstance(target, str) and target not in TARGET_NAMES:
                names = (*TARGET_NAMES, "learnable")
                raise ValueError(f"unknown target {target!r}; valid names: {', '.join(names)}")
            target_quantiles(target, [0.5])
            self.target_spec = target
        else:
            raise TypeError(
                "target must be a name, a torch.distributions.Distribution, a 1-D tensor of quantiles or a "
                f"MonotoneTarget; got {type(target).__name__}"
            )

    def _target(self) -> Target:
        if self.target_module is not None:
            return self.target_module()
        if self.target_tensor is not None:
            return self.target_tensor
        assert self.target_spec is not None
        return self.target_spec

    def reset_running_stats(self) -> None:
        """Knots back to the standard normal quantiles, batch counter to 0."""
        if self.running_knots is not None and self.num_batches_tracked is not None:
            start = target_quantiles("gaussian", knot_levels(self.n_knots)).to(self.running_knots)
            self.running_knots.copy_(start.expand_as(self.running_knots))
            self.num_batches_tracked.zero_()

    def _map(
        self, x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        tracking = self.running_knots is not None and self.num_batches_tracked is not None
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} needs a floating-point input; got {x.dtype}")
        knots = self.running_knots if tracking and not self.training else None
        noise = self.eps if self.training else 0.0
        target = self._target()
        y, sorted_rows = _group_map(
            x, groups, target, weight, bias, knots, self.blend, self.grad, noise, self.generator
        )
        if tracking and self.training:
            assert self.running_knots is not None and self.num_batches_tracked is not None
            with torch.no_grad():
                if sorted_rows is None:  # ranked with tie noise: the knots come from the clean input
                    sorted_rows = torch.sort(x.detach().float().reshape(x.shape[0] * groups, -1), -1).values
                rows = sorted_rows.reshape(x.shape[0], groups, -1)
                batch = sorted_quantiles(rows, knot_levels(self.n_knots)).mean(0)
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / int(self.num_batches_tracked)
                self.running_knots.lerp_(batch.to(self.running_knots), m)
        return y

    def _extra(self) -> str:
        target = (
            "learnable"
            if self.target_module is not None
            else ("tensor" if self.target_tensor is not None else repr(self.target_spec))
        )
        return (
            f"target={target}, eps={self.eps}, grad={self.grad!r}, blend={self.blend}, "
            f"track_running_stats={self.track_running_stats}, n_knots={self.n_knots}"
        )


def _affine_params(
    module: nn.Module, enabled: bool, shape: tuple[int, ...], bias: bool, device: Any, dtype: Any
) -> None:
    weight = nn.Parameter(torch.ones(shape, device=device, dtype=dtype)) if enabled else None
    module.register_parameter("weight", weight)
    with_bias = enabled and bias
    module.register_parameter(
        "bias", nn.Parameter(torch.zeros(shape, device=device, dtype=dtype)) if with_bias else None
    )


class GroupMap(_QuantileMap):
    r"""``nn.GroupNorm`` with each sample's group quantile-mapped to ``target`` instead of standardised.

    .. math:: y = \gamma_c\,\bigl(\alpha\,Q(\hat F_{n,g}(x)) + (1 - \alpha)\,\mathrm{GN}(x)\bigr) + \beta_c

    with :math:`\hat F_{n,g}` the mid-rank ECDF of sample n's group g (Hazen positions), see
    :func:`~shiftlab.functional.quantile.group_map`. With ``track_running_stats`` the per-group quantile
    knots (the batch mean of the per-sample quantiles at :math:`(k+1/2)/K`, a 1-D Wasserstein barycentre)
    are updated by EMA in training and eval maps through them: deterministic and batch-independent.
    On CUDA with Triton (float32, ``grad="ste"``) the map runs as fused kernels with the same output; there
    a group holding NaN or inf maps to NaN, as in ``nn.GroupNorm``, where the CPU path raises ``ValueError``.

    Parameters
    ----------
    num_groups, num_channels, affine
        As in ``nn.GroupNorm``; ``weight`` and ``bias`` have shape (num_channels,).
    target
        ``"uniform"`` (unit variance), ``"gaussian"``, ``"cauchy"``, ``"learnable"`` (a
        :class:`MonotoneTarget`), a scalar ``torch.distributions`` object, a 1-D tensor of quantiles, or a
        :class:`MonotoneTarget`.
    eps
        Standard deviation of the tie-breaking noise added in training (0: ties share their mid-rank);
        drawn from a generator seeded with ``seed``; never used in eval. Not GroupNorm's variance floor.
    track_running_stats, momentum, n_knots
        Running quantile knots: EMA with ``momentum`` (None: cumulative average) of K knots per group.
    grad
        Backward surrogate: ``"ste"`` (default), ``"ecdf"``, ``"softrank"``.
    blend
        :math:`\alpha`: 1 is the pure map; below 1 mixes in GroupNorm (for pretrained networks).
    seed
        Seed of the tie-noise generator.

    Examples
    --------
    >>> layer = GroupMap(2, 4)
    >>> layer(torch.randn(3, 4, 5, 5)).shape
    torch.Size([3, 4, 5, 5])
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        target: LayerTarget = "gaussian",
        eps: float = 0.0,
        affine: bool = True,
        track_running_stats: bool = False,
        momentum: float | None = 0.1,
        n_knots: int = 64,
        *,
        grad: str = DEFAULT_GRAD,
        blend: float = 1.0,
        seed: int = 0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        for name, v in (("num_groups", num_groups), ("num_channels", num_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        if num_channels % num_groups:
            raise ValueError(f"num_channels {num_channels} is not divisible by num_groups {num_groups}")
        super().__init__(
            num_groups, target, eps, track_running_stats, momentum, n_knots, grad, blend, seed, device
        )
        self.num_groups, self.num_channels, self.affine = num_groups, num_channels, affine
        _affine_params(self, affine, (num_channels,), True, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape (N, num_channels, *)."""
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected input of shape (N, {self.num_channels}, *); got {tuple(x.shape)}")
        return self._map(x, self.num_groups, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, affine={self.affine}, {self._extra()}"


class InstanceMap(_QuantileMap):
    r"""``nn.InstanceNorm1d/2d/3d`` with each sample's channel quantile-mapped to ``target``.

    :class:`GroupMap` with one group per channel, for inputs (N, C, L), (N, C, H, W) or (N, C, D, H, W);
    defaults as in ``nn.InstanceNorm*d`` (``affine=False``, ``track_running_stats=False``); running knots
    are per channel. Other parameters: see :class:`GroupMap`.

    Examples
    --------
    >>> InstanceMap(3)(torch.randn(2, 3, 4, 4)).shape
    torch.Size([2, 3, 4, 4])
    """

    def __init__(
        self,
        num_features: int,
        target: LayerTarget = "gaussian",
        eps: float = 0.0,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        n_knots: int = 64,
        *,
        grad: str = DEFAULT_GRAD,
        blend: float = 1.0,
        seed: int = 0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int; got {num_features!r}")
        super().__init__(
            num_features, target, eps, track_running_stats, momentum, n_knots, grad, blend, seed, device
        )
        self.num_features, self.affine = num_features, affine
        _affine_params(self, affine, (num_features,), True, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape (N, num_features, *spatial) with 1 to 3 spatial dimensions."""
        if not 3 <= x.ndim <= 5 or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected input of shape (N, {self.num_features}, *spatial) with 1-3 spatial dimensions; "
                f"got {tuple(x.shape)}"
            )
        return self._map(x, self.num_features, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, affine={self.affine}, {self._extra()}"


class LayerMap(_QuantileMap):
    r"""``nn.LayerNorm`` with the trailing ``normalized_shape`` values of each sample quantile-mapped.

    ``weight`` and ``bias`` have shape ``normalized_shape`` (``elementwise_affine``, ``bias`` as in
    ``nn.LayerNorm``); with ``track_running_stats`` one set of knots is shared by all samples. Other
    parameters: see :class:`GroupMap`.

    Examples
    --------
    >>> LayerMap([4, 5])(torch.randn(2, 3, 4, 5)).shape
    torch.Size([2, 3, 4, 5])
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        target: LayerTarget = "gaussian",
        eps: float = 0.0,
        elementwise_affine: bool = True,
        bias: bool = True,
        track_running_stats: bool = False,
        momentum: float | None = 0.1,
        n_knots: int = 64,
        *,
        grad: str = DEFAULT_GRAD,
        blend: float = 1.0,
        seed: int = 0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"normalized_shape must be positive ints; got {normalized_shape!r}")
        super().__init__(1, target, eps, track_running_stats, momentum, n_knots, grad, blend, seed, device)
        self.normalized_shape, self.elementwise_affine = shape, elementwise_affine
        _affine_params(self, elementwise_affine, shape, bias, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape (*, *normalized_shape)."""
        d = len(self.normalized_shape)
        if x.ndim < d or tuple(x.shape[x.ndim - d :]) != self.normalized_shape:
            raise ValueError(f"expected input ending in {self.normalized_shape}; got {tuple(x.shape)}")
        flat = x.reshape(-1, 1, math.prod(self.normalized_shape))
        y = self._map(flat, 1, None, None).reshape(x.shape)
        if self.weight is None:
            return y
        out = y.to(self.weight.dtype) * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, elementwise_affine={self.elementwise_affine}, {self._extra()}"
