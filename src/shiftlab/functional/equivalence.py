"""Equivalence, power and bootstrap decisions for correlations: TOST, minimum detectable effect, sample size.

"Not significant" is not evidence of "no association": a correlation is shown to be negligible only when
its interval lies inside a declared margin :math:`\\pm\\delta` (two one-sided tests, TOST), and a null
result is informative only next to the smallest effect the data could have detected. This module gives
both, analytically (Fisher transformation) and from a bootstrap distribution.

Analytic results use :math:`z = \\operatorname{artanh}(r)`, approximately normal with standard error

.. math:: \\mathrm{se}_z = \\frac{c}{\\sqrt{n - 3 - k}}, \\qquad
          c = 1 \\text{ (Pearson)}, \\quad c = \\sqrt{1 + r^2/2} \\text{ (Spearman; Bonett \\& Wright 2000)},

for a (partial) correlation of ``n`` observations given ``k`` covariates. Bootstrap decisions read the same
quantities off the replicates of the statistic (percentile intervals, test inversion).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from shiftlab.functional._checks import _check_int, _check_open_unit
from shiftlab.functional._convert import ArrayLike, as_tensor

__all__ = [
    "BootstrapEquivalence",
    "EquivalenceTest",
    "bootstrap_interval",
    "bootstrap_p_value",
    "bootstrap_tost",
    "correlation_power",
    "equivalence_sample_size",
    "minimum_detectable_correlation",
    "tost_correlation",
]


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _phi_inv(q: float) -> float:
    return float(torch.special.ndtri(torch.tensor(q, dtype=torch.float64)))


def _check_margin(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise TypeError(f"delta must be a float in (0, 1); got {type(delta).__name__}")
    return _check_open_unit(delta, "delta")


def _check_n(n: object, k: object) -> tuple[int, int]:
    k = _check_int(k, "k", low=0)
    n = _check_int(n, "n", low=1)
    if n <= k + 3:
        raise ValueError(f"need n > k + 3 = {k + 3} observations for a Fisher-z interval; got n={n}")
    return n, k


@dataclass(frozen=True)
class EquivalenceTest:
    """Result of :func:`tost_correlation`.

    Attributes
    ----------
    r
        The observed correlation.
    delta
        The equivalence margin: the hypothesis shown is :math:`|\\rho| < \\delta`.
    p_lower, p_upper
        One-sided p-values of :math:`H_0: \\rho \\le -\\delta` and :math:`H_0: \\rho \\ge \\delta`.
    p_value
        TOST p-value, ``max(p_lower, p_upper)``.
    ci_low, ci_high
        The :math:`1 - 2\\alpha` Fisher-z interval; equivalence at level ``alpha`` holds exactly when it lies
        inside :math:`(-\\delta, \\delta)`.
    equivalent
        ``p_value <= alpha``.
    """

    r: float
    delta: float
    p_lower: float
    p_upper: float
    p_value: float
    ci_low: float
    ci_high: float
    equivalent: bool


def tost_correlation(
    r: float,
    n: int,
    delta: float,
    *,
    k: int = 0,
    alpha: float = 0.05,
    method: Literal["pearson", "spearman"] = "pearson",
) -> EquivalenceTest:
    r"""Two one-sided tests (TOST) that a (partial) correlation lies within :math:`\pm\delta`.

    With :math:`z = \operatorname{artanh}(r)`, :math:`\zeta = \operatorname{artanh}(\delta)` and the
    module's :math:`\mathrm{se}_z`,

    .. math::

        p_{\text{lower}} = 1 - \Phi\Big(\frac{z + \zeta}{\mathrm{se}_z}\Big), \qquad
        p_{\text{upper}} = \Phi\Big(\frac{z - \zeta}{\mathrm{se}_z}\Big), \qquad
        p = \max(p_{\text{lower}}, p_{\text{upper}}).

    Rejecting both one-sided nulls at level :math:`\alpha` is the same as the :math:`1 - 2\alpha` interval
    :math:`\tanh(z \pm z_{1-\alpha}\,\mathrm{se}_z)` lying inside :math:`(-\delta, \delta)` (Schuirmann
    1987). For a partial correlation pass the number of covariates ``k``.

    Parameters
    ----------
    r
        Observed correlation in ``(-1, 1)``.
    n
        Number of observations; ``n > k + 3``.
    delta
        Equivalence margin in ``(0, 1)``.
    k
        Number of covariates partialled out.
    alpha
        Level of each one-sided test.
    method
        ``"pearson"`` or ``"spearman"`` (widens :math:`\mathrm{se}_z` by :math:`\sqrt{1 + r^2/2}`).

    Returns
    -------
    EquivalenceTest

    Examples
    --------
    >>> res = tost_correlation(0.02, 1000, 0.1)
    >>> res.equivalent, round(res.p_value, 4)
    (True, 0.0056)
    >>> tost_correlation(0.02, 30, 0.1).equivalent  # too few runs to show anything is negligible
    False
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman'; got {method!r}")
    if isinstance(r, bool) or not isinstance(r, int | float) or not -1.0 < float(r) < 1.0:
        raise ValueError(f"r must be a number strictly between -1 and 1; got {r!r}")
    level = _check_open_unit(alpha, "alpha")
    margin = _check_margin(delta)
    n, k = _check_n(n, k)
    r = float(r)
    c = math.sqrt(1.0 + r * r / 2.0) if method == "spearman" else 1.0
    se = c / math.sqrt(n - 3 - k)
    z, zeta = math.atanh(r), math.atanh(margin)
    p_lower = 1.0 - _phi((z + zeta) / se)
    p_upper = _phi((z - zeta) / se)
    half = _phi_inv(1.0 - level) * se
    p_value = max(p_lower, p_upper)
    return EquivalenceTest(
        r=r,
        delta=margin,
        p_lower=p_lower,
        p_upper=p_upper,
        p_value=p_value,
        ci_low=math.tanh(z - half),
        ci_high=math.tanh(z + half),
        equivalent=p_value <= level,
    )


def correlation_power(r: float, n: int, *, k: int = 0, alpha: float = 0.05) -> float:
    r"""Power of the two-sided test of :math:`\rho = 0` when the true (partial) correlation is ``r``.

    The formula of R's ``pwr.r.test`` (and :func:`pingouin.power_corr`), with the ``k`` covariates of a
    partial correlation taking ``k`` observations: with :math:`m = n - k`, :math:`t^* = t_{m-2,\,1-\alpha/2}`,
    :math:`r_c = \sqrt{t^{*2} / (t^{*2} + m - 2)}`, :math:`z_r = \operatorname{artanh}(r) + r / (2(m-1))`,

    .. math::

        \text{power} = \Phi\big((z_r - \operatorname{artanh} r_c)\sqrt{m - 3}\big)
                     + \Phi\big((-z_r - \operatorname{artanh} r_c)\sqrt{m - 3}\big).

    Examples
    --------
    >>> round(correlation_power(0.5, 20), 4)
    0.6379
    """
    from scipy.stats import t as student_t  # lazy: keeps `import shiftlab.functional` light

    if isinstance(r, bool) or not isinstance(r, int | float) or not -1.0 < float(r) < 1.0:
        raise ValueError(f"r must be a number strictly between -1 and 1; got {r!r}")
    level = _check_open_unit(alpha, "alpha")
    n, k = _check_n(n, k)
    m = n - k
    rho = abs(float(r))
    t_crit = float(student_t.ppf(1.0 - level / 2.0, m - 2))
    z_crit = math.atanh(math.sqrt(t_crit**2 / (t_crit**2 + m - 2)))
    z_r = math.atanh(rho) + rho / (2.0 * (m - 1))
    root = math.sqrt(m - 3)
    return _phi((z_r - z_crit) * root) + _phi((-z_r - z_crit) * root)


def minimum_detectable_correlation(n: int, *, k: int = 0, alpha: float = 0.05, power: float = 0.8) -> float:
    r"""Smallest :math:`|\rho|` that a two-sided level-``alpha`` test detects with probability ``power``.

    Solves :func:`correlation_power` :math:`(\rho, n, k, \alpha) = \text{power}` for :math:`\rho` by
    bisection (power increases with :math:`|\rho|`). Close to
    :math:`\tanh\big((z_{1-\alpha/2} + z_{\text{power}})/\sqrt{n - 3 - k}\big)`. A null result at ``n`` rules
    out nothing smaller than this.

    Examples
    --------
    >>> round(minimum_detectable_correlation(20), 4)  # as pingouin.power_corr(n=20, power=0.8)
    0.5822
    >>> round(minimum_detectable_correlation(30, k=1), 2)
    0.49
    """
    level = _check_open_unit(alpha, "alpha")
    target = _check_open_unit(power, "power")
    n, k = _check_n(n, k)
    if correlation_power(1e-12, n, k=k, alpha=level) >= target:
        raise ValueError(f"power={power} is not above the test level: every effect is detectable")
    lo, hi = 1e-12, 1.0 - 1e-12
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if correlation_power(mid, n, k=k, alpha=level) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def equivalence_sample_size(delta: float, *, k: int = 0, alpha: float = 0.05, power: float = 0.8) -> int:
    r"""Runs needed for :func:`tost_correlation` to show :math:`|\rho| < \delta` with probability ``power``
    when the true correlation is 0.

    .. math::

        n = \Big\lceil \Big(\frac{z_{1-\alpha} + z_{(1+\text{power})/2}}{\operatorname{artanh}\delta}\Big)^2
            \Big\rceil + 3 + k.

    Examples
    --------
    >>> equivalence_sample_size(0.1)
    854
    """
    level = _check_open_unit(alpha, "alpha")
    target = _check_open_unit(power, "power")
    margin = _check_margin(delta)
    k = _check_int(k, "k", low=0)
    ratio = (_phi_inv(1.0 - level) + _phi_inv((1.0 + target) / 2.0)) / math.atanh(margin)
    return math.ceil(ratio**2) + 3 + k


# ----------------------------------------------------------------------------------------------------------
# decisions from a bootstrap distribution
# ----------------------------------------------------------------------------------------------------------


def _distribution(distribution: ArrayLike) -> torch.Tensor:
    d = as_tensor(distribution, name="distribution", min_rows=2)
    return d.to(torch.float64)


def bootstrap_interval(distribution: ArrayLike, alpha: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Percentile interval :math:`[q_{\alpha/2}, q_{1-\alpha/2}]` of bootstrap replicates along dim 0.

    Quantiles by linear interpolation (:func:`numpy.quantile`'s default), batched over the other
    dimensions. For the :math:`1 - 2\alpha` interval of a TOST pass ``2 * alpha``.

    Examples
    --------
    >>> import torch
    >>> low, high = bootstrap_interval(torch.arange(101.0), alpha=0.1)
    >>> float(low), float(high)
    (5.0, 95.0)
    """
    level = _check_open_unit(alpha, "alpha")
    d = _distribution(distribution)
    q = torch.tensor([level / 2.0, 1.0 - level / 2.0], dtype=torch.float64, device=d.device)
    low, high = torch.quantile(d, q, dim=0)
    return low, high


def bootstrap_p_value(distribution: ArrayLike, null: float = 0.0) -> torch.Tensor:
    r"""Two-sided bootstrap p-value of ``statistic == null`` by inverting the percentile interval.

    With :math:`B` replicates, :math:`c_- = \#\{\hat\theta^*_b \le \theta_0\}` and
    :math:`c_+ = \#\{\hat\theta^*_b \ge \theta_0\}`,

    .. math:: p = \min\Big(1, \frac{2\,(\min(c_-, c_+) + 1)}{B + 1}\Big),

    the smallest level whose percentile interval still touches :math:`\theta_0`, with the observed sample
    counted as one replicate so that :math:`p > 0`. Batched over the trailing dimensions.

    Examples
    --------
    >>> import torch
    >>> bootstrap_p_value(torch.linspace(0.1, 1.0, 99))  # every replicate above 0
    tensor(0.0200, dtype=torch.float64)
    """
    d = _distribution(distribution)
    if isinstance(null, bool) or not isinstance(null, int | float) or not math.isfinite(null):
        raise ValueError(f"null must be a finite number; got {null!r}")
    b = d.shape[0]
    below = (d <= null).sum(dim=0)
    above = (d >= null).sum(dim=0)
    count = torch.minimum(below, above).to(torch.float64)
    return torch.clamp(2.0 * (count + 1.0) / (b + 1.0), max=1.0)


@dataclass(frozen=True)
class BootstrapEquivalence:
    """Result of :func:`bootstrap_tost`; tensors shaped like one replicate of the statistic."""

    p_lower: torch.Tensor
    """:math:`(1 + \\#\\{\\hat\\theta^* \\le -\\delta\\}) / (1 + B)`: against :math:`\\theta\\le-\\delta`."""
    p_upper: torch.Tensor
    """:math:`(1 + \\#\\{\\hat\\theta^* \\ge \\delta\\}) / (1 + B)`: against :math:`\\theta \\ge \\delta`."""
    p_value: torch.Tensor
    """TOST p-value ``max(p_lower, p_upper)``."""


def bootstrap_tost(distribution: ArrayLike, delta: float) -> BootstrapEquivalence:
    r"""Two one-sided tests of :math:`|\theta| < \delta` from bootstrap replicates (percentile inversion).

    .. math::

        p_{\text{lower}} = \frac{1 + \#\{\hat\theta^*_b \le -\delta\}}{1 + B}, \qquad
        p_{\text{upper}} = \frac{1 + \#\{\hat\theta^*_b \ge \delta\}}{1 + B}, \qquad
        p = \max(p_{\text{lower}}, p_{\text{upper}}).

    :math:`p \le \alpha` holds when (up to the interpolation of quantiles) the :math:`1 - 2\alpha`
    percentile interval of :func:`bootstrap_interval` lies inside :math:`(-\delta, \delta)`. Batched over
    trailing dimensions.

    Examples
    --------
    >>> import torch
    >>> res = bootstrap_tost(torch.linspace(-0.05, 0.05, 199), delta=0.1)
    >>> float(res.p_value)
    0.005
    """
    d = _distribution(distribution)
    margin = _check_margin(delta)
    b = d.shape[0]
    p_lower = ((d <= -margin).sum(dim=0).to(torch.float64) + 1.0) / (b + 1.0)
    p_upper = ((d >= margin).sum(dim=0).to(torch.float64) + 1.0) / (b + 1.0)
    return BootstrapEquivalence(p_lower=p_lower, p_upper=p_upper, p_value=torch.maximum(p_lower, p_upper))
