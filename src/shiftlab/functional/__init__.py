"""shiftlab.functional: the shared numerical core. Pure functions, torch tensors in and out.

Numpy arrays and nested sequences are accepted at every public edge through :func:`as_tensor`, which
validates shapes and finiteness before any work starts.

- :mod:`~shiftlab.functional.linalg`: covariance (with Ledoit-Wolf shrinkage).
- :mod:`~shiftlab.functional.spectra`: symmetric spectra, effective and stable rank, eigengaps.
- :mod:`~shiftlab.functional.subspaces`: principal angles between column spaces.
- :mod:`~shiftlab.functional.jacobian`: Jacobian energy along directions (forward-mode AD or finite
  differences), the core of the PMH penalty.
- :mod:`~shiftlab.functional.quantile`: quantile maps (mid-rank, Hazen positions) to a target
  distribution, their backward surrogates, Hazen quantiles, monotone piecewise-linear maps.
- :mod:`~shiftlab.functional.topology`: exact H0 persistence (MST deaths, merge order, scipy-format
  single-linkage dendrogram) by tiled Borůvka on CPU/CUDA; batched H0 total persistence.
- :mod:`~shiftlab.functional.equivalence`: TOST for correlations, power, minimum detectable effect,
  bootstrap intervals/p-values/TOST.
- :mod:`~shiftlab.functional.cluster_bootstrap`: weighted ranks and (partial) correlations, cluster/block
  bootstrap.
- :mod:`~shiftlab.functional.crossfit`: cross-fitted (kernel ridge) nuisance residuals.
- :mod:`~shiftlab.functional.per_sample`: per-sample gradients (torch.func) and their Gram matrix.
- :mod:`~shiftlab.functional.transport`: squared distances, exact W2 and plans (POT, optional),
  barycentric maps.
- :mod:`~shiftlab.functional.sinkhorn`: entropic plans, debiased Sinkhorn divergences.
- :mod:`~shiftlab.functional.displacement`: particle displacements descending Sinkhorn divergences.
- :mod:`~shiftlab.functional.sliced`: sliced W2.
- :mod:`~shiftlab.functional.stats`: ranks, Pearson/Spearman correlation, partial correlation with
  p-value and CI.
- :mod:`~shiftlab.functional.resampling`: paired bootstrap CIs, (block) permutation tests.
- :mod:`~shiftlab.functional.fdr`: Benjamini-Hochberg false discovery rate control.
"""

from __future__ import annotations

from shiftlab.functional._convert import ArrayLike, as_tensor
from shiftlab.functional.cluster_bootstrap import (
    WeightedCorrelations,
    cluster_bootstrap,
    cluster_bootstrap_weights,
    weighted_correlations,
    weighted_partial_correlation,
    weighted_rankdata,
)
from shiftlab.functional.crossed import crossed_bootstrap_ci
from shiftlab.functional.crossfit import crossfit_residuals, kernel_ridge_predict
from shiftlab.functional.displacement import multi_sinkhorn_displacement, sinkhorn_displacement
from shiftlab.functional.equivalence import (
    BootstrapEquivalence,
    EquivalenceTest,
    bootstrap_interval,
    bootstrap_p_value,
    bootstrap_tost,
    correlation_power,
    equivalence_sample_size,
    minimum_detectable_correlation,
    tost_correlation,
)
from shiftlab.functional.fdr import BenjaminiHochberg, benjamini_hochberg
from shiftlab.functional.jacobian import Energy, fd_energy, jvp_energy
from shiftlab.functional.linalg import covariance, ledoit_wolf_shrinkage
from shiftlab.functional.per_sample import per_sample_gradient_gram, per_sample_gradients
from shiftlab.functional.quantile import (
    GRAD_NAMES,
    TARGET_NAMES,
    empirical_quantiles,
    group_map,
    interp_map,
    knot_levels,
    quantile_map,
    target_quantiles,
)
from shiftlab.functional.resampling import (
    BootstrapResult,
    PermutationTestResult,
    paired_bootstrap_ci,
    permutation_test,
)
from shiftlab.functional.sinkhorn import EntropicOT, entropic_plan, sinkhorn_divergence
from shiftlab.functional.sliced import sliced_wasserstein2
from shiftlab.functional.spectra import (
    Eigengap,
    SymmetricSpectrum,
    effective_rank,
    effective_rank_from_spectrum,
    eigengap,
    stable_rank,
    symmetric_spectrum,
)
from shiftlab.functional.stats import (
    PartialCorrelation,
    mean_difference,
    partial_correlation,
    pearson,
    rankdata,
    spearman,
)
from shiftlab.functional.subspaces import principal_angles
from shiftlab.functional.topology import H0Diagram, h0_persistence, h0_total_persistence
from shiftlab.functional.transport import barycentric_map, exact_plan, squared_distances, wasserstein2

__all__ = [
    "GRAD_NAMES",
    "TARGET_NAMES",
    "ArrayLike",
    "BenjaminiHochberg",
    "BootstrapEquivalence",
    "BootstrapResult",
    "Eigengap",
    "Energy",
    "EntropicOT",
    "EquivalenceTest",
    "H0Diagram",
    "PartialCorrelation",
    "PermutationTestResult",
    "SymmetricSpectrum",
    "WeightedCorrelations",
    "as_tensor",
    "barycentric_map",
    "benjamini_hochberg",
    "bootstrap_interval",
    "bootstrap_p_value",
    "bootstrap_tost",
    "cluster_bootstrap",
    "cluster_bootstrap_weights",
    "correlation_power",
    "covariance",
    "crossed_bootstrap_ci",
    "crossfit_residuals",
    "effective_rank",
    "effective_rank_from_spectrum",
    "eigengap",
    "empirical_quantiles",
    "entropic_plan",
    "equivalence_sample_size",
    "exact_plan",
    "fd_energy",
    "group_map",
    "h0_persistence",
    "h0_total_persistence",
    "interp_map",
    "jvp_energy",
    "kernel_ridge_predict",
    "knot_levels",
    "ledoit_wolf_shrinkage",
    "mean_difference",
    "minimum_detectable_correlation",
    "multi_sinkhorn_displacement",
    "paired_bootstrap_ci",
    "partial_correlation",
    "pearson",
    "per_sample_gradient_gram",
    "per_sample_gradients",
    "permutation_test",
    "principal_angles",
    "quantile_map",
    "rankdata",
    "sinkhorn_displacement",
    "sinkhorn_divergence",
    "sliced_wasserstein2",
    "spearman",
    "squared_distances",
    "stable_rank",
    "symmetric_spectrum",
    "target_quantiles",
    "tost_correlation",
    "wasserstein2",
    "weighted_correlations",
    "weighted_partial_correlation",
    "weighted_rankdata",
]
