"""Topological training diagnostics: H0 persistence of class geometry, calibrated monitors, PH training.

- :func:`class_geometry` / :func:`class_geometry_from_features`: per-class directions of any layer, the
  cosine distances between classes and their H0 diagram (exact, :func:`shiftlab.functional.topology.
  h0_persistence`).
- :class:`PHMonitor`: H0 of train vs validation geometry, an alert calibrated by a split null of the same
  data (the noise floor is reported beside every gap), and the stop rule "k consecutive alerts".
- :class:`LayerPHMonitor`: H0 over layers under the CKA distance, HEALTHY / WATCH / COLLAPSE.
- :func:`choose_lr`: pick a learning rate from the search by validation accuracy, validation loss or
  the H0 coefficient of variation (:func:`h0_coefficient_of_variation`).
- :class:`PHTrainer`: difficulty probe, LR search, monitored training, confusion pairs scored against the
  confusion matrix, the class dendrogram, and a real FGSM attack per class pair.

Examples
--------
>>> from shiftlab.topology import consecutive_alert_stop
>>> consecutive_alert_stop([False, True, True, True], patience=3)
3
"""

from __future__ import annotations

from shiftlab.topology._analysis import PairScore, confusion_matrix, pair_confusion_rates, score_pairs
from shiftlab.topology._attack import FGSMResult, fgsm, fgsm_pair_vulnerability
from shiftlab.topology._config import OPTIMIZERS, PHTrainConfig
from shiftlab.topology._geometry import (
    GEOMETRY_MODES,
    ClassGeometry,
    GeometryMode,
    class_distances,
    class_geometry,
    class_geometry_from_features,
    extract_features,
)
from shiftlab.topology._layers import (
    LayerConfig,
    LayerPHMonitor,
    LayerState,
    LayerStep,
    linear_cka,
    scalar_h0,
)
from shiftlab.topology._lr import (
    LR_CRITERIA,
    LRCandidate,
    LRCriterion,
    choose_lr,
    h0_coefficient_of_variation,
)
from shiftlab.topology._models import MODEL_NAMES, PureFieldNet, build_model, monitored_layers
from shiftlab.topology._monitor import (
    MonitorConfig,
    MonitorStep,
    PHMonitor,
    consecutive_alert_stop,
    split_null_gaps,
)
from shiftlab.topology._report import EpochRecord, PHTrainReport
from shiftlab.topology._trainer import PHTrainer

__all__ = [
    "GEOMETRY_MODES",
    "LR_CRITERIA",
    "MODEL_NAMES",
    "OPTIMIZERS",
    "ClassGeometry",
    "EpochRecord",
    "FGSMResult",
    "GeometryMode",
    "LRCandidate",
    "LRCriterion",
    "LayerConfig",
    "LayerPHMonitor",
    "LayerState",
    "LayerStep",
    "MonitorConfig",
    "MonitorStep",
    "PHMonitor",
    "PHTrainConfig",
    "PHTrainReport",
    "PHTrainer",
    "PairScore",
    "PureFieldNet",
    "build_model",
    "choose_lr",
    "class_distances",
    "class_geometry",
    "class_geometry_from_features",
    "confusion_matrix",
    "consecutive_alert_stop",
    "extract_features",
    "fgsm",
    "fgsm_pair_vulnerability",
    "h0_coefficient_of_variation",
    "linear_cka",
    "monitored_layers",
    "pair_confusion_rates",
    "scalar_h0",
    "score_pairs",
    "split_null_gaps",
]
