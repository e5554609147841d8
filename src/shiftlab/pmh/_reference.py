r"""What a user would try instead of the PMH penalty: the reference arms of :func:`run_arms`.

* ``augmentation``: plain training where each row of each batch is, with equal probability, left alone or
  moved by one of the augmentations Σ was estimated from (:func:`mix_augmentations`);
* ``target_rows``: plain training on the source rows plus the labelled target rows Σ was estimated from,
  oversampled (:func:`with_target_rows`);
* ``coral``: plain training on source inputs re-coloured to the target's first and second moments
  (:func:`coral_map`, unlabelled target rows only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from shiftlab.functional import as_tensor

__all__ = ["coral_map", "mix_augmentations", "with_target_rows"]

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

#: Target rows are repeated until they make up about this share of the ``target_rows`` training set:
#: enough to matter against 10,000 source rows, few enough that the source still dominates.
TARGET_SHARE = 0.25


def mix_augmentations(augmentations: Sequence[Augmentation]) -> Augmentation:
    """``aug(x, generator)``: each row unchanged or moved by one augmentation, each choice equally likely.

    Examples
    --------
    >>> from shiftlab.pmh import random_shift
    >>> aug = mix_augmentations([random_shift])
    >>> x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> moved = aug(x, torch.Generator().manual_seed(1))
    >>> 0 < int((moved != x).flatten(1).any(1).sum()) < 64
    True
    """
    augs = list(augmentations)
    if not augs or not all(callable(a) for a in augs):
        raise TypeError("augmentations must be a non-empty sequence of callables aug(x, generator)")

    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        choice = torch.randint(len(augs) + 1, (x.shape[0],), generator=generator)
        out = x.clone()
        for k, aug in enumerate(augs, start=1):
            rows = (choice == k).to(x.device)
            if bool(rows.any()):
                out[rows] = aug(x[rows], generator)
        return out

    return apply


def with_target_rows(
    source: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor]
) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
    r"""Source rows plus the labelled target rows repeated :math:`k` times, and :math:`k`.

    :math:`k = \max(1, \operatorname{round}(s\, n_s / ((1 - s)\, n_t)))` with :math:`s` =
    :data:`TARGET_SHARE`, so the target rows make up about a quarter of the training set.

    Examples
    --------
    >>> (x, y), k = with_target_rows((torch.zeros(300, 2), torch.zeros(300).long()),
    ...                              (torch.ones(10, 2), torch.ones(10).long()))
    >>> k, x.shape[0], int(y.sum())
    (10, 400, 100)
    """
    (xs, ys), (xt, yt) = source, target
    if xt.shape[0] == 0:
        raise ValueError("target_rows needs at least one labelled target row")
    if xs.shape[1:] != xt.shape[1:]:
        raise ValueError(
            f"source and target rows differ in shape: {tuple(xs.shape[1:])} vs {tuple(xt.shape[1:])}"
        )
    k = max(1, round(TARGET_SHARE * xs.shape[0] / ((1 - TARGET_SHARE) * xt.shape[0])))
    x = torch.cat([xs, xt.to(xs.dtype).repeat(k, *([1] * (xt.ndim - 1)))])
    y = torch.cat([ys, yt.to(ys.dtype).repeat(k)])
    return (x, y), k


def _sqrt_psd(matrix: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).pow(power)) @ vectors.T


def coral_map(
    source: torch.Tensor, target: torch.Tensor, *, shrinkage: float = 1.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""CORAL re-colouring of source rows to the target's mean and covariance (Sun et al., AAAI 2016).

    With flattened rows, means :math:`\mu_s, \mu_t`, covariances regularised as
    :math:`C_\cdot + \varepsilon I` where :math:`\varepsilon` = ``shrinkage`` · tr(C_s)/d (the paper's
    "+ I" for features of unit average variance),

    .. math:: x \mapsto (x - \mu_s)\, C_s^{-1/2} C_t^{1/2} + \mu_t .

    Only unlabelled target rows are used. The returned map keeps the input's shape and dtype.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> s = torch.randn(4000, 3, generator=g)
    >>> t = 2 * torch.randn(4000, 3, generator=g) + 1
    >>> mapped = coral_map(s, t, shrinkage=1e-6)(s)
    >>> round(float(mapped.mean()), 1), round(float(mapped.std()), 1)
    (1.0, 2.0)
    """
    xs = as_tensor(source, name="source", min_rows=2).flatten(1).double()
    xt = as_tensor(target, name="target", min_rows=2).flatten(1).double()
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"source and target have {xs.shape[1]} and {xt.shape[1]} features")
    if not shrinkage > 0:
        raise ValueError(f"shrinkage must be > 0 (the covariances must be invertible); got {shrinkage}")
    d = xs.shape[1]
    mu_s, mu_t = xs.mean(0), xt.mean(0)
    cs, ct = torch.cov(xs.T).reshape(d, d), torch.cov(xt.T).reshape(d, d)
    eps = shrinkage * float(torch.trace(cs)) / d
    if eps <= 0:
        raise ValueError("the source rows are constant: there is no covariance to re-colour")
    eye = torch.eye(d, dtype=torch.float64)
    transform = _sqrt_psd(cs + eps * eye, -0.5) @ _sqrt_psd(ct + eps * eye, 0.5)

    def apply(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).double()
        if flat.shape[1] != d:
            raise ValueError(f"coral_map was fitted on {d} features; got {flat.shape[1]}")
        mapped = (flat - mu_s) @ transform + mu_t
        return mapped.to(x.dtype).reshape(x.shape)

    return apply
