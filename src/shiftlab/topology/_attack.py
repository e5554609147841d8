"""A real FGSM attack and the per-class-pair vulnerability it measures."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from shiftlab.functional._checks import _check_int
from shiftlab.topology._geometry import _model_device

__all__ = ["FGSMResult", "fgsm", "fgsm_pair_vulnerability"]


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    *,
    bounds: tuple[float, float] = (0, 1),
) -> torch.Tensor:
    r"""Fast gradient sign method (Goodfellow et al. 2015): one signed-gradient step on the loss.

    .. math:: x' = \operatorname{clip}_{[lo, hi]}\big(x + \varepsilon\,
              \operatorname{sign}\nabla_x \mathcal{L}_{CE}(f(x), y)\big),

    the clip keeping the image in its valid range (part of the attack's definition: ``bounds=(0, 1)``
    for shiftlab's images). The model runs as given (call ``.eval()`` first); only the input gradient is
    computed, so no parameter's ``.grad`` changes.

    Parameters
    ----------
    model
        Classifier returning logits.
    x
        Inputs, values within ``bounds``.
    y
        int64 labels.
    epsilon
        :math:`L_\infty` step, ``> 0``.
    bounds
        Valid input range.

    Returns
    -------
    torch.Tensor
        Adversarial inputs, same shape as ``x``; :math:`\lVert x' - x\rVert_\infty \le \varepsilon`.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    >>> x = torch.full((3, 1, 2, 2), 0.5)
    >>> x_adv = fgsm(net, x, torch.tensor([0, 1, 0]), 0.1)
    >>> bool(((x_adv - x).abs() <= 0.1 + 1e-7).all()), bool((x_adv != x).any())
    (True, True)
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon > 0:
        raise ValueError(f"epsilon must be a positive number; got {epsilon!r}")
    lo, hi = bounds
    if not lo < hi:
        raise ValueError(f"bounds must satisfy lo < hi; got {bounds}")
    if bool((x < lo).any()) or bool((x > hi).any()):
        raise ValueError(f"inputs must lie within bounds {bounds}")
    with torch.enable_grad():  # the attack needs a gradient even when called under torch.no_grad()
        x_req = x.detach().clone().requires_grad_(True)
        loss = functional.cross_entropy(model(x_req), y)
        (grad,) = torch.autograd.grad(loss, x_req)  # input gradient only: no parameter .grad changes
    return (x.detach() + epsilon * grad.sign()).clamp(lo, hi)


@dataclass(frozen=True, eq=False)
class FGSMResult:
    """Outcome of :func:`fgsm_pair_vulnerability`.

    Attributes
    ----------
    epsilon
        The attack's :math:`L_\\infty` step.
    clean_accuracy, adversarial_accuracy
        Accuracy before and after the attack.
    flips
        int64 ``(C, C)``: ``flips[a, b]`` counts samples of class ``a``, correct before the attack, that the
        attack sends to class ``b`` (diagonal 0).
    correct
        int64 ``(C,)``: correctly classified clean samples per class.
    pair_vulnerability
        float64 ``(C, C)``, symmetric: :math:`(F_{ab} + F_{ba}) / (n_a + n_b)` with :math:`n` the correct
        counts: the share of correctly classified samples of the two classes that FGSM moves into the other;
        NaN for a pair with no correctly classified sample (undefined), 0 on the diagonal.
    mean_perturbation
        Mean :math:`L_\\infty` distance between clean and attacked inputs (0 would mean no attack ran).
    """

    epsilon: float
    clean_accuracy: float
    adversarial_accuracy: float
    flips: torch.Tensor
    correct: torch.Tensor
    pair_vulnerability: torch.Tensor
    mean_perturbation: float


def fgsm_pair_vulnerability(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    epsilon: float = 0.1,
    batch_size: int = 512,
) -> FGSMResult:
    """Run FGSM on ``(x, y)`` and count, per class pair, the correct samples pushed into the other class.

    Works on an eval-mode copy of ``model`` (the caller's model is not touched).

    Examples
    --------
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> x, y = torch.rand(30, 1, 2, 2), torch.arange(30) % 3
    >>> res = fgsm_pair_vulnerability(net, x, y, 3, epsilon=0.3)
    >>> tuple(res.pair_vulnerability.shape), res.adversarial_accuracy <= res.clean_accuracy
    ((3, 3), True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    c = _check_int(n_classes, "n_classes", low=2)
    batch_size = _check_int(batch_size, "batch_size", low=1)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"x and y must hold the same positive number of samples; got {x.shape[0]}, {y.shape[0]}"
        )
    if bool((y < 0).any()) or bool((y >= c).any()):
        raise ValueError(f"labels must lie in [0, {c})")
    work = copy.deepcopy(model).eval()
    device = _model_device(work)
    clean_pred, adv_pred, linf = [], [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        x_adv = fgsm(work, xb, yb, epsilon)
        with torch.no_grad():
            clean_pred.append(work(xb).argmax(dim=1).cpu())
            adv_pred.append(work(x_adv).argmax(dim=1).cpu())
        linf.append((x_adv - xb).flatten(1).abs().amax(dim=1).cpu())
    clean, adv, labels = torch.cat(clean_pred), torch.cat(adv_pred), y.cpu().to(torch.int64)
    ok = clean == labels
    flips = torch.zeros(c, c, dtype=torch.int64)
    moved = ok & (adv != labels)
    flips.index_put_(
        (labels[moved], adv[moved]), torch.ones(int(moved.sum()), dtype=torch.int64), accumulate=True
    )
    correct = torch.bincount(labels[ok], minlength=c)
    pair_total = (correct[:, None] + correct[None, :]).to(torch.float64)
    sym = (flips + flips.T).to(torch.float64)
    vulnerability = sym / pair_total  # 0 / 0 = NaN: undefined for a pair without a correct sample
    vulnerability.fill_diagonal_(0.0)
    return FGSMResult(
        epsilon=float(epsilon),
        clean_accuracy=float(ok.to(torch.float64).mean()),
        adversarial_accuracy=float((adv == labels).to(torch.float64).mean()),
        flips=flips,
        correct=correct,
        pair_vulnerability=vulnerability,
        mean_perturbation=float(torch.cat(linf).mean()),
    )
