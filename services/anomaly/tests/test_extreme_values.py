"""Values anywhere in the float range train and score finite models; a fit that still yields
non-finite numbers is a bad request (before anything is registered), never a 500 or a model
that scores NaN and calls nothing an anomaly."""

from __future__ import annotations

import pickle
from typing import Any, ClassVar

import numpy as np
import pytest

from nexus.anomaly.detectors import Algorithm, AnomalyModel, Detector, Standardizer
from nexus.anomaly.detectors._model import NON_FINITE_FIT
from nexus.common.errors import FailedPrecondition, InvalidArgument

FAST: dict[Algorithm, dict[str, Any]] = {
    Algorithm.AUTOENCODER: {"epochs": 5},
    Algorithm.ENSEMBLE: {"autoencoder.epochs": 5},
}
BIG = 1e308


def _extreme(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(60, 3))
    if kind == "near the limit":  # every value near +-1e308, of both signs
        return rng.choice([BIG, -BIG], size=normal.shape) * rng.uniform(0.5, 1.0, normal.shape)
    if kind == "positive":
        return np.full(normal.shape, BIG) * rng.uniform(0.5, 1.0, normal.shape)
    normal[:6, 0] = BIG  # a few extreme values among ordinary ones
    return normal


@pytest.mark.parametrize("kind", ["near the limit", "positive", "some"])
@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_values_near_the_float_limit_train_a_finite_model(algorithm: Algorithm, kind: str) -> None:
    x = _extreme(kind)
    model = AnomalyModel.train(algorithm, x, params=FAST.get(algorithm), seed=1)

    scores, flags = model.score(x)
    assert np.isfinite(model.threshold)
    assert np.isfinite(scores).all()
    assert flags.dtype == bool
    assert np.isfinite(model.validation_metrics(x)["score_mean"])


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_a_point_at_the_float_limit_scores_finite_and_is_an_anomaly(algorithm: Algorithm) -> None:
    x = np.random.default_rng(0).normal(size=(80, 3))
    model = AnomalyModel.train(algorithm, x, params=FAST.get(algorithm), seed=1)

    scores, flags = model.score(np.array([[BIG, 0.0, 0.0], [-BIG, -BIG, BIG]]))
    contributions = model.explain([BIG, 0.0, 0.0])

    assert np.isfinite(scores).all()
    assert flags.all()
    assert contributions[0].index == 0
    assert all(np.isfinite(c.contribution) for c in contributions)


def test_the_standardizer_is_scale_safe() -> None:
    x = np.array([[BIG, 1.0], [-BIG, 1.0], [BIG / 2, 1.0]])
    standardizer = Standardizer.fit(x)

    assert np.isfinite(standardizer.mean).all()
    assert np.isfinite(standardizer.scale).all()
    standard = standardizer.transform(np.vstack([x, [[-BIG, BIG]]]))
    assert np.isfinite(standard).all()
    assert standard[:3, 1].tolist() == [0.0, 0.0, 0.0]  # a constant column maps to 0


def test_a_solver_that_overflows_is_a_bad_request() -> None:
    x = np.random.default_rng(0).normal(size=(80, 3))
    params = {"kernel": "poly", "gamma": "1e300", "degree": "10"}

    with pytest.raises(InvalidArgument) as raised:
        AnomalyModel.train(Algorithm.ONE_CLASS_SVM, x, params=params)
    assert raised.value.reason == NON_FINITE_FIT
    with pytest.raises(InvalidArgument):
        AnomalyModel.train(
            Algorithm.ENSEMBLE, x, params={f"one_class_svm.{k}": v for k, v in params.items()}
        )


class _Diverging(Detector):
    """A detector whose fit diverges: what an optimiser that runs away produces."""

    algorithm: ClassVar[Algorithm] = Algorithm.AUTOENCODER

    def fit(self, x: np.ndarray) -> None:
        self.weights = np.full(x.shape[1], np.nan)

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x @ self.weights, dtype=np.float64)


def test_any_detector_that_fits_non_finite_state_is_refused() -> None:
    model = AnomalyModel(Algorithm.AUTOENCODER)
    model.detector = _Diverging()

    with pytest.raises(InvalidArgument) as raised:
        model.fit(np.random.default_rng(0).normal(size=(20, 2)))
    assert raised.value.reason == NON_FINITE_FIT


def test_a_stored_version_with_a_nan_threshold_is_not_served_as_normal() -> None:
    model = AnomalyModel.train(
        Algorithm.ISOLATION_FOREST, np.random.default_rng(0).normal(size=(40, 2))
    )
    model.threshold = float("nan")  # as versions trained before the fit check could be stored
    restored = pickle.loads(pickle.dumps(model))

    with pytest.raises(FailedPrecondition):
        restored.score([[0.0, 0.0]])
