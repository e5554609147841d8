r"""Nuisance estimators from paired displacements: D3 ``augmentation``, D7 ``style`` and ``adversarial``.

Each builds displacement rows :math:`\delta_i = f(x_i') - f(x_i)` between a sample and its nuisance-moved
version at the site (:math:`f` the identity at ``"input"``, the layer output otherwise) and returns the
**uncentred** second moment :math:`\hat\Sigma = \frac1N \sum_i \delta_i \delta_i^\top`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators_common import (
    Floor,
    check_int,
    check_labels,
    check_model,
    check_positive,
    check_samples,
    estimate_from_rows,
    model_device,
    prepare_site,
    result_dtype,
    signal_basis,
    site_features,
    to_model,
)
from shiftlab.pmh._pgd import check_range, pgd

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _signal(feats: torch.Tensor, labels: Any) -> torch.Tensor | None:
    if labels is None:
        return None
    y = check_labels(labels, feats.shape[0], "labels")
    basis = signal_basis(feats.double().cpu(), y.cpu())
    if basis is None:
        raise ValueError("labels hold a single class: the signal directions need at least 2 classes")
    return basis


def _from_deltas(deltas: torch.Tensor, *, n_data: int, estimator: str, **kwargs: Any) -> NuisanceEstimate:
    rows = deltas.double().cpu() / math.sqrt(deltas.shape[0])
    return estimate_from_rows(rows, n_data=n_data, estimator=estimator, **kwargs)


def check_augmentations(augmentations: Any) -> list[Augmentation]:
    """One callable or a non-empty sequence of callables, as a list."""
    augs = [augmentations] if callable(augmentations) else augmentations
    if not isinstance(augs, Sequence) or isinstance(augs, str) or len(augs) == 0:
        raise TypeError("augmentations must be a callable aug(x, generator) or a non-empty sequence of them")
    for i, aug in enumerate(augs):
        if not callable(aug):
            raise TypeError(f"augmentations[{i}] is a {type(aug).__name__}, not a callable aug(x, generator)")
    return list(augs)


def augmentation(
    x: Any,
    augmentations: Augmentation | Sequence[Augmentation],
    *,
    model: nn.Module | None = None,
    site: str = "input",
    n_draws: int = 1,
    seed: int = 0,
    labels: Any = None,
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceEstimate:
    r"""D3: displacements caused by known nuisance transformations, :math:`\delta = f(a(x)) - f(x)`.

    Every augmentation :math:`a` in ``augmentations`` is applied ``n_draws`` times to the whole batch
    (one ``torch.Generator`` seeded with ``seed`` drives all draws, in order), and

    .. math:: \hat\Sigma = \frac{1}{n\,A\,D} \sum_{a}\sum_{k=1}^{D}\sum_{i=1}^{n}
              \delta_{a,k,i}\delta_{a,k,i}^\top

    (each augmentation equally likely). Uncentred: a systematic displacement (e.g. thicker strokes add
    ink on average) is part of the nuisance.

    Parameters
    ----------
    x
        Samples ``(n, *shape)``.
    augmentations
        One callable ``aug(x, generator) -> x'`` returning a tensor of ``x``'s shape, or a sequence of
        them (e.g. :data:`~shiftlab.pmh.DIGIT_AUGMENTATIONS`).
    model, site
        Features at a layer (``site`` a layer name of ``model``, frozen deep copy in eval mode) or the
        input itself (``site="input"``, the default).
    n_draws
        Random draws per augmentation.
    seed
        Seed of the generator (on ``x``'s device).
    labels
        Optional integer labels of ``x``: fills ``signal`` with the class-mean-difference directions.
    rank, floor
        As in :func:`~shiftlab.pmh.subspace`.

    Examples
    --------
    >>> import torch
    >>> from shiftlab.pmh import random_shift
    >>> x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> est = augmentation(x, random_shift, n_draws=2, rank=4)
    >>> est.counts["n_deltas"], est.shape
    (128, (1, 8, 8))
    """
    augs = check_augmentations(augmentations)
    xs = check_samples(x, "x")
    n_draws = check_int(n_draws, "n_draws", low=1)
    seed = check_int(seed, "seed", low=0)
    copy, shape = prepare_site(model, site, xs, rank, floor)
    base, deltas = augmentation_deltas(xs, augs, copy, site, n_draws=n_draws, seed=seed)
    n = xs.shape[0]
    n_deltas = n * len(augs) * n_draws
    counts = {"n_samples": n, "n_augmentations": len(augs), "n_draws": n_draws, "n_deltas": n_deltas}
    return _from_deltas(
        deltas,
        n_data=counts["n_deltas"],
        estimator="augmentation",
        site=site,
        shape=shape,
        counts=counts,
        rank=rank,
        floor=floor,
        signal=_signal(base, labels),
        dtype=result_dtype(base),
    )


def augmentation_deltas(
    xs: torch.Tensor,
    augs: Sequence[Augmentation],
    copy: nn.Module | None,
    site: str,
    *,
    n_draws: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features at the site ``(n, d)`` and the deltas ``(n·A·D, d)``, augmentation-major then draw-major.

    One ``torch.Generator`` on ``x``'s device seeded with ``seed`` drives every draw, in order.
    """
    xs = xs if copy is None else to_model(xs, copy)
    base, _ = site_features(xs, copy, site)
    generator = torch.Generator(device=xs.device).manual_seed(seed)
    deltas = []
    for a, aug in enumerate(augs):
        for _ in range(n_draws):
            moved = aug(xs, generator)
            if not isinstance(moved, torch.Tensor) or moved.shape != xs.shape:
                got = tuple(moved.shape) if isinstance(moved, torch.Tensor) else type(moved).__name__
                raise ValueError(
                    f"augmentations[{a}] returned {got}; it must keep x's shape {tuple(xs.shape)}"
                )
            if not bool(torch.isfinite(moved).all()):
                raise ValueError(f"augmentations[{a}] returned non-finite values")
            feats, _ = site_features(moved.to(xs.dtype), copy, site)
            deltas.append(feats - base)
    return base, torch.cat(deltas)


def check_style_pairs(content: Any, styled: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``content`` and ``styled`` as samples of equal shapes (paired row by row)."""
    xc = check_samples(content, "content")
    xs = check_samples(styled, "styled")
    if xc.shape != xs.shape:
        raise ValueError(
            f"content and styled must be paired row by row with equal shapes; got {tuple(xc.shape)} "
            f"and {tuple(xs.shape)}"
        )
    return xc, xs


def style(
    content: Any,
    styled: Any,
    *,
    model: nn.Module | None = None,
    site: str = "input",
    labels: Any = None,
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceEstimate:
    r"""D7: paired style displacements, :math:`\delta_i = f(\text{styled}_i) - f(\text{content}_i)`.

    Row i of ``styled`` must show the same content (same label) as row i of ``content`` in another style
    (the pairing is the user's data, not an index coincidence).
    :math:`\hat\Sigma = \frac1n\sum_i \delta_i\delta_i^\top` (uncentred).

    Parameters
    ----------
    content, styled
        Paired samples, both ``(n, *shape)``.
    model, site, labels, rank, floor
        As in :func:`augmentation` (``labels`` are those of ``content``).

    Examples
    --------
    >>> import torch
    >>> content = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
    >>> styled = content + torch.tensor([0.0, 0.0, 1.0])
    >>> style(content, styled, rank=1).basis()[:, 0].abs().argmax().item()
    2
    """
    xc, xs = check_style_pairs(content, styled)
    copy, shape = prepare_site(model, site, xc, rank, floor)
    fc, _ = site_features(xc, copy, site)
    fs, _ = site_features(xs, copy, site)
    n = xc.shape[0]
    return _from_deltas(
        fs - fc,
        n_data=n,
        estimator="style",
        site=site,
        shape=shape,
        counts={"n_pairs": n},
        rank=rank,
        floor=floor,
        signal=_signal(fc, labels),
        dtype=result_dtype(fc, fs),
    )


def adversarial(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    epsilon: float,
    norm: Literal["linf", "l2"] = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    valid_range: tuple[float, float] | None = None,
    site: str = "input",
    batch_size: int = 256,
    rank: int | None = None,
    floor: Floor = 0.0,
) -> NuisanceEstimate:
    r"""D7 (adversarial): PGD displacements that raise the model's cross-entropy inside a norm ball.

    Projected gradient ascent on :math:`\ell(\delta) = \mathrm{CE}(\text{model}(x + \delta), y)` through
    the model's head (Madry et al. 2018): from :math:`\delta_0` (uniform in the ball when
    ``random_start``, else 0), ``steps`` updates

    .. math::

        \delta \leftarrow \Pi\big(\delta + \alpha\,\mathrm{sign}(\nabla_\delta \ell)\big) \ (L_\infty),
        \qquad
        \delta \leftarrow \Pi\big(\delta + \alpha\,\nabla_\delta \ell / \lVert\nabla_\delta \ell\rVert_2\big)
        \ (L_2),

    where :math:`\Pi` projects onto :math:`\{\lVert\delta\rVert \le \epsilon\}` and then, when
    ``valid_range=(lo, hi)`` is given, onto :math:`lo \le x + \delta \le hi`. The displacement is δ at the
    input, or :math:`f(x + \delta) - f(x)` at a layer ``site``; :math:`\hat\Sigma` is its uncentred
    second moment. The model is a frozen deep copy in eval mode; only δ receives gradients.

    Parameters
    ----------
    model
        Classifier returning logits ``(n, classes)``.
    x, y
        Inputs ``(n, *shape)`` and integer labels ``(n,)``.
    epsilon
        Radius of the ball (> 0), in input units.
    norm
        ``"linf"`` or ``"l2"``.
    steps
        Number of ascent steps (>= 1).
    step_size
        α; default ``2.5 * epsilon / steps``.
    random_start
        Start uniformly inside the ball instead of at 0.
    seed
        Seed of the random start.
    valid_range
        ``(lo, hi)`` of valid input values (``x`` must lie inside), or ``None``.
    site
        ``"input"`` or a layer name where the displacement is measured.
    batch_size
        Rows per PGD batch.
    rank, floor
        As in :func:`~shiftlab.pmh.subspace`.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Linear(4, 3)
    >>> x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    >>> y = torch.arange(32) % 3
    >>> est = adversarial(net, x, y, epsilon=0.1, norm="l2", steps=5, rank=2)
    >>> est.estimator, est.shape
    ('adversarial', (4,))
    """
    deltas, feats, ys, shape = adversarial_deltas(
        model,
        x,
        y,
        epsilon=epsilon,
        norm=norm,
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        seed=seed,
        valid_range=valid_range,
        site=site,
        batch_size=batch_size,
        rank=rank,
        floor=floor,
    )
    n = deltas.shape[0]
    return _from_deltas(
        deltas,
        n_data=n,
        estimator="adversarial",
        site=site,
        shape=shape,
        counts={"n_samples": n, "steps": steps},
        rank=rank,
        floor=floor,
        signal=signal_basis(feats.double().cpu(), ys.cpu()),
        dtype=result_dtype(feats),
    )


def adversarial_deltas(
    model: nn.Module,
    x: Any,
    y: Any,
    *,
    epsilon: float,
    norm: Literal["linf", "l2"] = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    valid_range: tuple[float, float] | None = None,
    site: str = "input",
    batch_size: int = 256,
    rank: int | None = None,
    floor: Floor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """The checked PGD displacements of :func:`adversarial` at ``site``: (deltas, clean features, labels,
    feature shape). Each row's δ depends only on that row (the L2 step is normalised per example), so
    shards of the rows give the rows of the whole."""
    check_model(model)
    xs = check_samples(x, "x")
    ys = check_labels(y, xs.shape[0], "y")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2'; got {norm!r}")
    epsilon = check_positive(epsilon, "epsilon")
    steps = check_int(steps, "steps", low=1)
    alpha = 2.5 * epsilon / steps if step_size is None else check_positive(step_size, "step_size")
    seed = check_int(seed, "seed", low=0)
    batch_size = check_int(batch_size, "batch_size", low=1)
    if valid_range is not None:
        lo, hi = check_range(valid_range)
        if float(xs.min()) < lo or float(xs.max()) > hi:
            raise ValueError(
                f"x has values in [{float(xs.min()):.4g}, {float(xs.max()):.4g}], outside valid_range "
                f"({lo}, {hi})"
            )
        valid_range = (lo, hi)
    copy, shape = prepare_site(model, site, xs, rank, floor)
    assert copy is not None
    device = model_device(copy)
    xs, ys = to_model(xs, copy), ys.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    deltas, bases = [], []
    for start in range(0, xs.shape[0], batch_size):
        xb, yb = xs[start : start + batch_size], ys[start : start + batch_size]
        delta = pgd(
            copy,
            xb,
            yb,
            norm=norm,
            epsilon=epsilon,
            steps=steps,
            step_size=alpha,
            random_start=random_start,
            valid_range=valid_range,
            generator=generator,
        )
        moved, _ = site_features(xb + delta, copy, site)
        base, _ = site_features(xb, copy, site)
        deltas.append(moved - base)
        bases.append(base)
    return torch.cat(deltas), torch.cat(bases), ys, shape
