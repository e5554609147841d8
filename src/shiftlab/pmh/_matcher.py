r"""``PMHMatcher``: the PMH penalty for frozen features, as an sklearn transformer.

For a linear head :math:`w` on features :math:`x`, the penalty :math:`\lambda\,\mathbb{E}\lVert w^\top n
\rVert^2 = \lambda\, w^\top \Sigma w` turns ridge-like training into a generalized ridge. Whitening the
features by

.. math:: T = (I + \lambda \Sigma)^{-1/2}, \qquad x \mapsto T x,

makes an ordinary (L2-regularised) linear head on :math:`Tx` equivalent to that generalized ridge on
:math:`x`. With Σ = U diag(λ_i) Uᵀ + σ² I,
:math:`T = (1+\lambda\sigma^2)^{-1/2} (I - UU^\top)
+ U \operatorname{diag}((1+\lambda(\lambda_i+\sigma^2))^{-1/2}) U^\top`.
As λ → ∞ with σ² = 0, T becomes the projection onto the complement of Σ's range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from shiftlab.pmh._estimate import NuisanceEstimate


class PMHMatcher(TransformerMixin, BaseEstimator):
    """Map features through (I + λ Σ)^(-1/2), Σ the deploy nuisance.

    Parameters
    ----------
    nuisance
        A fitted :class:`NuisanceEstimate` on the feature space, or the name of an estimator run in
        :meth:`fit` from the domain keyword arguments: ``"domain"`` (needs ``target``; class-aligned when
        ``y`` and ``target_labels`` are given), ``"subspace"`` (needs ``y``, ``target``, ``target_labels``) or
        ``"isotropic"`` (σ² I with ``sigma``; needs no domain data).
    strength
        λ ≥ 0; ``math.inf`` projects Σ's range out (requires a zero floor).
    rank
        Keep the top ``rank`` directions of Σ (default: the estimate's own rank).
    sigma
        Noise scale for ``nuisance="isotropic"``.

    Attributes
    ----------
    nuisance_ : NuisanceEstimate
    basis_ : ndarray (d, r)
    scales_ : ndarray (r,)
        Multipliers along the basis directions.
    complement_scale_ : float
        Multiplier on the complement of the basis.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> source = rng.normal(size=(200, 3)); target = source + np.array([5.0, 0.0, 0.0])
    >>> m = PMHMatcher(nuisance="domain", strength=math.inf, rank=1).fit(source, target=target)
    >>> bool(abs(m.basis_[0, 0]) > 0.99)  # the shifted axis is found and projected out
    True
    """

    def __init__(
        self,
        nuisance: NuisanceEstimate | str = "domain",
        strength: float = 1.0,
        rank: int | None = None,
        sigma: float = 1.0,
    ) -> None:
        self.nuisance = nuisance
        self.strength = strength
        self.rank = rank
        self.sigma = sigma

    def _estimate(self, X: np.ndarray, y: Any, target: Any, target_labels: Any) -> NuisanceEstimate:
        from shiftlab.pmh import estimate_nuisance

        if isinstance(self.nuisance, NuisanceEstimate):
            if self.nuisance.dim != X.shape[1]:
                raise ValueError(
                    f"the nuisance estimate has d={self.nuisance.dim}; X has {X.shape[1]} features"
                )
            return self.nuisance
        if self.nuisance == "isotropic":
            return estimate_nuisance("isotropic", sigma=self.sigma, shape=(X.shape[1],))
        if self.nuisance in ("domain", "subspace"):
            if target is None:
                raise ValueError(f"nuisance={self.nuisance!r} needs target features: fit(X, y, target=...)")
            kwargs: dict[str, Any] = {
                "source": X,
                "target": np.asarray(target, dtype=np.float64),
                "rank": self.rank,
            }
            if y is not None:
                kwargs["source_labels"] = np.asarray(y)
            if target_labels is not None:
                kwargs["target_labels"] = np.asarray(target_labels)
            return estimate_nuisance(self.nuisance, **kwargs)
        raise ValueError(
            "nuisance must be a NuisanceEstimate or one of 'domain', 'subspace', 'isotropic'; "
            f"got {self.nuisance!r}"
        )

    def fit(self, X: Any, y: Any = None, *, target: Any = None, target_labels: Any = None) -> PMHMatcher:
        """Estimate (or take) Σ and build the whitening map."""
        X = validate_data(self, X, dtype=np.float64)
        if (
            isinstance(self.strength, bool)
            or not isinstance(self.strength, int | float)
            or not self.strength >= 0
        ):
            raise ValueError(f"strength must be a number >= 0 (math.inf allowed); got {self.strength!r}")
        estimate = self._estimate(X, y, target, target_labels)
        if self.rank is not None and estimate.rank > self.rank:
            estimate = estimate.truncate(self.rank)
        lam = float(self.strength)
        if math.isinf(lam) and estimate.floor > 0:
            raise ValueError("strength=inf with a positive isotropic floor would map everything to zero")
        basis = estimate.basis().double()
        eig = estimate.factor.double().pow(2).sum(0)
        if math.isinf(lam):
            scales = torch.zeros_like(eig)
            complement = 1.0
        else:
            scales = (1 + lam * (eig + estimate.floor)).rsqrt()
            complement = 1 / math.sqrt(1 + lam * estimate.floor)
        self.nuisance_ = estimate
        self.basis_ = basis.numpy()
        self.scales_ = scales.numpy()
        self.complement_scale_ = complement
        return self

    def transform(self, X: Any) -> np.ndarray:
        """T x for every row of X."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        coords = X @ self.basis_
        return X * self.complement_scale_ + (coords * (self.scales_ - self.complement_scale_)) @ self.basis_.T
