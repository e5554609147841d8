"""shiftlab.audit: is a training metric real signal, or a disguised loss proxy? (Marginal Baseline Eval)

- :class:`MBEEvaluator` / :func:`audit_runs`: raw and partial correlation of metrics with a target given a
  ladder of baselines, bootstrap CIs (cluster or block bootstrap when runs are not independent), a TOST
  equivalence test against ``±delta``, Benjamini-Hochberg across metrics x groups, and a class per metric:
  signal, loss proxy or inconclusive (with the minimum detectable effect); sanity controls run
  automatically.
- the protocol's stages over a runs table: :func:`acid_test`, :func:`architecture_harness`,
  :func:`baseline_control`, :func:`init_probe`.
- metrics worth auditing: :func:`fim_norm` (gradient effective rank, per-sample gradients by
  :mod:`torch.func` or the Gram identity), :func:`sci`, :func:`sci_spectrum`, :func:`network_sci` (weight
  effective rank).
"""

from shiftlab.audit._config import NUISANCE_MODELS, MBEConfig
from shiftlab.audit._evaluator import MBEEvaluator
from shiftlab.audit._fim import FIMNorm, fim_norm
from shiftlab.audit._report import MBEReport
from shiftlab.audit._sci import NetworkSCI, SCISpectrum, network_sci, sci, sci_spectrum
from shiftlab.audit._stages import (
    StageReport,
    acid_test,
    architecture_harness,
    audit_runs,
    baseline_control,
    init_probe,
)
from shiftlab.audit._table import RunsTable, as_runs_table, read_runs_csv
from shiftlab.audit._verdict import MetricVerdict, Verdict

__all__ = [
    "NUISANCE_MODELS",
    "FIMNorm",
    "MBEConfig",
    "MBEEvaluator",
    "MBEReport",
    "MetricVerdict",
    "NetworkSCI",
    "RunsTable",
    "SCISpectrum",
    "StageReport",
    "Verdict",
    "acid_test",
    "architecture_harness",
    "as_runs_table",
    "audit_runs",
    "baseline_control",
    "fim_norm",
    "init_probe",
    "network_sci",
    "read_runs_csv",
    "sci",
    "sci_spectrum",
]
