"""Anomaly detection, free of gRPC and NATS: detectors, the stored model, checks, streaming.

Batch: an `AnomalyModel` standardises points, fits one detector (`Algorithm`: Isolation Forest,
One-Class SVM, LOF, an autoencoder, or their ensemble, the default) and sets a threshold from the
expected contamination; it scores, flags and explains new points, and pickles whole. Streaming:
`nexus.anomaly.detectors.online` has the detectors that score a source's points as they arrive,
with no training step.
"""

from nexus.anomaly.detectors._algorithm import Algorithm
from nexus.anomaly.detectors._autoencoder import AutoencoderDetector
from nexus.anomaly.detectors._base import Detector
from nexus.anomaly.detectors._ensemble import DEFAULT_MEMBERS as DEFAULT_ENSEMBLE_MEMBERS
from nexus.anomaly.detectors._ensemble import EnsembleDetector
from nexus.anomaly.detectors._factory import make_detector, param_specs
from nexus.anomaly.detectors._model import (
    DEFAULT_CONTAMINATION,
    MIN_TRAIN_ROWS,
    AnomalyModel,
    FeatureContribution,
    Standardizer,
)
from nexus.anomaly.detectors._params import ParamSpec
from nexus.anomaly.detectors._sklearn import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    OneClassSVMDetector,
)
from nexus.anomaly.detectors._types import BoolArray, FloatArray, Params, ParamValue
from nexus.anomaly.detectors._validation import (
    DEFAULT_MAX_FEATURES,
    DEFAULT_MAX_ROWS,
    validate_labels,
    validate_matrix,
    validate_point,
)

__all__ = [
    "DEFAULT_CONTAMINATION",
    "DEFAULT_ENSEMBLE_MEMBERS",
    "DEFAULT_MAX_FEATURES",
    "DEFAULT_MAX_ROWS",
    "MIN_TRAIN_ROWS",
    "Algorithm",
    "AnomalyModel",
    "AutoencoderDetector",
    "BoolArray",
    "Detector",
    "EnsembleDetector",
    "FeatureContribution",
    "FloatArray",
    "IsolationForestDetector",
    "LocalOutlierFactorDetector",
    "OneClassSVMDetector",
    "ParamSpec",
    "ParamValue",
    "Params",
    "Standardizer",
    "make_detector",
    "param_specs",
    "validate_labels",
    "validate_matrix",
    "validate_point",
]
