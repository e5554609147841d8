r"""``DeployMetric``: the per-example score the gate compares arms on (accuracy unless the user says so).

The verdict resamples seeds **and** holdout examples (a crossed bootstrap), so a deploy metric must be the
mean of per-example scores :math:`s_i = m(z_i, y_i)` (logits :math:`z_i`, label :math:`y_i`), higher is
better. Built in:

* ``accuracy``: :math:`s_i = [\arg\max z_i = y_i]`;
* ``balanced_accuracy``: :math:`s_i = [\arg\max z_i = y_i] \cdot n / (K n_{y_i})` with :math:`n_c` the
  holdout count of class c and K the classes present, so :math:`\bar s` is the mean per-class recall;
* ``neg_log_loss``: :math:`s_i = \log \operatorname{softmax}(z_i)_{y_i}` (minus the cross-entropy);
* ``neg_brier``: :math:`s_i = -\lVert \operatorname{softmax}(z_i) - e_{y_i} \rVert^2`.

Any ``DeployMetric(name, per_example)`` with the same contract can be passed instead. The metric chooses λ
on the selection splits and decides the verdict; source-validation *accuracy* stays the guard of the
source-tolerance rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

__all__ = ["METRICS", "DeployMetric", "resolve_metric"]


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=1) == labels).double()


def _balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    weight = labels.shape[0] / (classes.numel() * counts.double())
    return _accuracy(logits, labels) * weight[inverse]


def _neg_log_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=1).gather(1, labels[:, None]).squeeze(1)


def _neg_brier(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits.double(), dim=1)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return -(probs - onehot).pow(2).sum(dim=1)


@dataclasses.dataclass(frozen=True)
class DeployMetric:
    """A deploy metric as per-example scores (higher is better) whose mean is the metric.

    Attributes
    ----------
    name
        Shown in reports and tables.
    per_example
        ``(logits (n, C), labels (n,) int64) -> (n,)`` finite scores.

    Examples
    --------
    >>> z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]); y = torch.tensor([0, 0, 0])
    >>> METRICS["accuracy"].score(z, y).tolist()
    [1.0, 0.0, 1.0]
    >>> top = DeployMetric("margin", lambda z, y: z.gather(1, y[:, None]).squeeze(1) - z.max(1).values)
    >>> top.score(z, y).tolist()
    [0.0, -1.0, 0.0]
    """

    name: str
    per_example: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a DeployMetric needs a non-empty name")
        if not callable(self.per_example):
            raise TypeError(f"per_example must be callable; got {type(self.per_example).__name__}")

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """float64 ``(n,)`` per-example scores, checked for shape and finiteness."""
        scores = self.per_example(logits, labels)
        if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (labels.shape[0],):
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(
                f"deploy metric {self.name!r} must return one score per example, shape "
                f"({labels.shape[0]},); got {shape}"
            )
        scores = scores.detach().double().cpu()
        if not torch.isfinite(scores).all():
            raise ValueError(f"deploy metric {self.name!r} returned non-finite scores")
        return scores


METRICS: dict[str, DeployMetric] = {
    "accuracy": DeployMetric("accuracy", _accuracy),
    "balanced_accuracy": DeployMetric("balanced_accuracy", _balanced_accuracy),
    "neg_log_loss": DeployMetric("neg_log_loss", _neg_log_loss),
    "neg_brier": DeployMetric("neg_brier", _neg_brier),
}


def resolve_metric(metric: str | DeployMetric) -> DeployMetric:
    """A built-in metric by name, or ``metric`` itself.

    Examples
    --------
    >>> resolve_metric("neg_log_loss").name
    'neg_log_loss'
    >>> resolve_metric("f1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown deploy metric 'f1'; built in: accuracy, ... (or pass a DeployMetric)
    """
    if isinstance(metric, DeployMetric):
        return metric
    if isinstance(metric, str) and metric in METRICS:
        return METRICS[metric]
    raise ValueError(
        f"unknown deploy metric {metric!r}; built in: {', '.join(METRICS)} (or pass a DeployMetric)"
    )
