"""The trainable unit the service stores: standardiser, detector, threshold and feature names.

An `AnomalyModel` pickles whole (the registry signs and stores the pickle) and answers three
questions about new points: how anomalous (score), whether anomalous (above the threshold), and
why (which features drove the score).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from nexus.anomaly.detectors._algorithm import Algorithm
from nexus.anomaly.detectors._base import Detector
from nexus.anomaly.detectors._factory import make_detector
from nexus.anomaly.detectors._types import BoolArray, FloatArray, Params, ParamValue
from nexus.anomaly.detectors._validation import (
    MatrixLike,
    validate_labels,
    validate_matrix,
    validate_point,
)
from nexus.common.errors import FailedPrecondition, InvalidArgument

DEFAULT_CONTAMINATION = 0.1
"""The share of training points expected to be anomalous; sets the threshold."""

MIN_TRAIN_ROWS = 2
"""Fewer rows leave nothing to compare a point with (LOF needs a neighbour)."""

MAX_DEVIATIONS = 1e6
"""Standardised values are clipped to this many standard deviations: a point that far out is
as anomalous as any, and every detector's arithmetic (squares, float32) stays finite."""

NON_FINITE_FIT = "NON_FINITE_FIT"
"""The reason of the error for a fit that produced non-finite numbers."""

_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
_MIN_STD = 1e-12
_PROBE_ROWS = 64
_NON_FINITE = (
    "training produced non-finite numbers (the values or the parameters are out of the "
    "detector's numeric range); rescale the data or change the parameters"
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureContribution:
    """How much one feature drove a point's score.

    Attributes:
        index: The feature's column.
        name: The feature's name (`feature_<index>` when the model has none).
        value: The point's raw value of the feature.
        contribution: The drop in the score when the feature is set to its training median;
            positive means the feature made the point more anomalous.
    """

    index: int
    name: str
    value: float
    contribution: float


class Standardizer:
    """Per-feature z-scores with the training mean and (population) standard deviation.

    A constant training feature keeps a scale of 1, so it maps to 0 and any later change of it
    shows as a deviation in its own units rather than a division by zero. Scale-safe: values
    anywhere in the float range (up to +-1.8e308) give finite statistics and finite z-scores,
    and a z-score is clipped to +-`MAX_DEVIATIONS`, so no point can push a detector's
    arithmetic out of range.
    """

    def __init__(self, mean: FloatArray, scale: FloatArray) -> None:
        self.mean = mean
        self.scale = scale

    @classmethod
    def fit(cls, x: FloatArray) -> Standardizer:
        """The standardiser of the columns of `x`."""
        # Each column in units of its largest magnitude first: a sum or a square of values
        # near the float limit would overflow. (|mean| and std are at most that magnitude.)
        peak = np.abs(x).max(axis=0)
        peak = np.where(peak > 0, peak, 1.0)
        unit = x / peak
        std = unit.std(axis=0) * peak
        return cls(unit.mean(axis=0) * peak, np.where(std > _MIN_STD, std, 1.0))

    def transform(self, x: FloatArray) -> FloatArray:
        """`x` in standard units, within +-`MAX_DEVIATIONS`."""
        # x / scale - mean / scale, not (x - mean) / scale: the difference of two values of
        # opposite signs near the float limit would overflow.
        standard = x / self.scale - self.mean / self.scale
        return np.clip(standard, -MAX_DEVIATIONS, MAX_DEVIATIONS, out=standard)


class AnomalyModel:
    """A detector with its standardiser, threshold and feature names.

    Args:
        algorithm: The detection algorithm (default: the ensemble).
        params: Overrides of the algorithm's parameter defaults (see `param_specs`).
        feature_names: One name per feature, or None/empty for `feature_<index>`.
        seed: Seeds the detector, so equal data and seed train equal models.

    Raises:
        InvalidArgument: An unknown algorithm or parameter, a bad value, or duplicate or empty
            feature names.
    """

    def __init__(
        self,
        algorithm: Algorithm | str = Algorithm.ENSEMBLE,
        *,
        params: Params | None = None,
        feature_names: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        self.algorithm = Algorithm.parse(algorithm)
        self.detector: Detector = make_detector(self.algorithm, params, seed=seed)
        self.seed = seed
        self._names = _checked_names(feature_names)
        self._trained = False

    @classmethod
    def train(
        cls,
        algorithm: Algorithm | str,
        x: MatrixLike,
        *,
        params: Params | None = None,
        contamination: float = DEFAULT_CONTAMINATION,
        feature_names: Sequence[str] | None = None,
        seed: int = 0,
    ) -> AnomalyModel:
        """A model of `algorithm` fitted on `x` (see the constructor and `fit`)."""
        model = cls(algorithm, params=params, feature_names=feature_names, seed=seed)
        return model.fit(x, contamination)

    @property
    def params(self) -> dict[str, ParamValue]:
        """The detector's parameters in effect, defaults included."""
        return self.detector.params

    @property
    def n_features(self) -> int:
        """The number of features the model was trained on."""
        self._require_trained()
        return self._n_features

    @property
    def feature_names(self) -> list[str]:
        """One name per feature: the given names, else `feature_<index>`."""
        return [self._name(j) for j in range(self.n_features)]

    def fit(self, x: MatrixLike, contamination: float = DEFAULT_CONTAMINATION) -> AnomalyModel:
        """Fits the standardiser and the detector on `x`; sets the threshold.

        The threshold is the (1 - contamination) quantile of the training scores, so about that
        share of the training points score above it.

        Returns:
            The model itself, trained.

        Raises:
            InvalidArgument: Contamination outside (0, 0.5], fewer than 2 rows, a malformed
                matrix, or feature names that do not match its width.
        """
        contamination = _checked_contamination(contamination)
        matrix = _checked_training(x, self._names)
        self.standardizer = Standardizer.fit(matrix)
        standard = self.standardizer.transform(matrix)
        scores = _fit_scores(self.detector, standard)
        self.threshold = float(np.quantile(scores, 1.0 - contamination))
        _check_fitted(scores, self.threshold, self.detector.score(standard[:_PROBE_ROWS]))
        self.contamination = contamination
        self.n_train_rows = int(matrix.shape[0])
        self._medians = np.median(standard, axis=0)
        self._n_features = int(matrix.shape[1])
        self._trained = True
        return self

    def score(self, x: MatrixLike) -> tuple[FloatArray, BoolArray]:
        """Scores of the rows of `x` (higher is more anomalous) and whether each is an anomaly.

        Raises:
            InvalidArgument: A malformed matrix or a width other than the model's.
            FailedPrecondition: The model is not trained.
        """
        matrix = validate_matrix(x, n_features=self.n_features, max_rows=None, max_features=None)
        scores = self.detector.score(self.standardizer.transform(matrix))
        _check_scores(scores, self.threshold)
        return scores, scores > self.threshold

    def explain(self, x: Sequence[float] | FloatArray) -> list[FeatureContribution]:
        """Which features drove the score of point `x`, most contributing first.

        Occlusion, which works for every detector: each feature in turn is replaced by its
        training median (in standard units) and the drop in the score is its contribution.

        Raises:
            InvalidArgument: `x` is not one finite point of the model's width.
            FailedPrecondition: The model is not trained.
        """
        point = validate_point(x, n_features=self.n_features, max_features=None)
        standard = self.standardizer.transform(point)
        probes = np.repeat(standard[np.newaxis, :], self.n_features + 1, axis=0)
        columns = np.arange(self.n_features)
        probes[columns + 1, columns] = self._medians
        scores = self.detector.score(probes)
        drops = scores[0] - scores[1:]
        order = np.argsort(-drops, kind="stable")
        return [
            FeatureContribution(int(j), self._name(j), float(point[j]), float(drops[j]))
            for j in order
        ]

    def validation_metrics(
        self, x_val: MatrixLike, y_val: Sequence[float] | np.ndarray[Any, Any] | None = None
    ) -> dict[str, float]:
        """Scores of held-out points summarised, and ranking quality when labels are given.

        Returns:
            `score_mean`, `score_std`, `score_min`, `score_p50/p90/p95/p99`, `score_max`,
            `threshold` and `anomaly_rate` (share above the threshold); with labels (1 =
            anomaly) also `precision`, `recall` and `f1` at the threshold, and `roc_auc` and
            `average_precision` when both classes occur.

        Raises:
            InvalidArgument: A malformed matrix, or labels that are not one 0/1 per row.
        """
        scores, flags = self.score(x_val)
        metrics = _summary(scores) | {
            "threshold": self.threshold,
            "anomaly_rate": float(flags.mean()),
        }
        if y_val is not None:
            metrics |= _label_metrics(validate_labels(y_val, scores.shape[0]), scores, flags)
        return metrics

    def _name(self, index: int) -> str:
        return self._names[index] if self._names else f"feature_{index}"

    def _require_trained(self) -> None:
        if not self._trained:
            raise FailedPrecondition("the anomaly model is not trained; call fit() first")


def _checked_contamination(contamination: float) -> float:
    if not 0.0 < contamination <= 0.5:  # also refuses NaN
        raise InvalidArgument.for_field(
            "contamination", f"must be in (0, 0.5], got {contamination}"
        )
    return float(contamination)


def _checked_names(names: Sequence[str] | None) -> tuple[str, ...] | None:
    if not names:
        return None
    names = tuple(names)
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument.for_field(f"feature_names[{i}]", "must be a non-empty name")
        if name in names[:i]:
            raise InvalidArgument.for_field(f"feature_names[{i}]", f"repeats {name!r}")
    return names


def _checked_training(x: MatrixLike, names: tuple[str, ...] | None) -> FloatArray:
    matrix = validate_matrix(x, max_rows=None, max_features=None)
    if matrix.shape[0] < MIN_TRAIN_ROWS:
        raise InvalidArgument.for_field(
            "points", f"has {matrix.shape[0]} point(s); training needs at least {MIN_TRAIN_ROWS}"
        )
    if names is not None and len(names) != matrix.shape[1]:
        raise InvalidArgument.for_field(
            "feature_names", f"has {len(names)} names for {matrix.shape[1]} features"
        )
    return matrix


def _fit_scores(detector: Detector, standard: FloatArray) -> FloatArray:
    """The detector fitted on `standard`, and its training scores. A solver that fails on the
    numbers (scikit-learn refuses non-finite dual coefficients) is the same bad request as a
    fit that yields non-finite scores."""
    try:
        return detector.fit_score(standard)
    except (ValueError, ArithmeticError) as err:
        log.info("%s fit failed: %s", detector.algorithm.value, err)
        raise InvalidArgument(_NON_FINITE, reason=NON_FINITE_FIT) from err


def _check_fitted(train_scores: FloatArray, threshold: float, probe_scores: FloatArray) -> None:
    """The one check that a fit is usable, whatever the detector: its training scores, its
    threshold and its scores of training rows through the serving path are all finite. A fit
    that fails it (an optimiser that diverged, a kernel that overflowed) is refused before
    anything is registered."""
    finite = np.isfinite(train_scores).all() and np.isfinite(probe_scores).all()
    if not (finite and math.isfinite(threshold)):
        raise InvalidArgument(_NON_FINITE, reason=NON_FINITE_FIT)


def _check_scores(scores: FloatArray, threshold: float) -> None:
    """A version that gives a non-finite score is broken (one trained before the fit check):
    answering NaN, and `is_anomaly: false` with it, would hide that."""
    if not math.isfinite(threshold):
        raise FailedPrecondition("this model version has a non-finite threshold; retrain it")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise InvalidArgument.for_field(
            f"points[{bad[0]}]", "scores as a non-finite number with this model version"
        )


def _summary(scores: FloatArray) -> dict[str, float]:
    summary = {
        "score_mean": float(scores.mean()),
        "score_std": float(scores.std()),
        "score_min": float(scores.min()),
        "score_max": float(scores.max()),
    }
    return summary | {f"score_{k}": float(np.quantile(scores, q)) for k, q in _QUANTILES.items()}


def _label_metrics(
    labels: np.ndarray[Any, Any], scores: FloatArray, flags: BoolArray
) -> dict[str, float]:
    metrics = {
        "precision": float(precision_score(labels, flags, zero_division=0)),
        "recall": float(recall_score(labels, flags, zero_division=0)),
        "f1": float(f1_score(labels, flags, zero_division=0)),
    }
    if 0 < labels.sum() < labels.shape[0]:
        metrics["roc_auc"] = float(roc_auc_score(labels, scores))
        metrics["average_precision"] = float(average_precision_score(labels, scores))
    return metrics
