"""The ensemble's calibration and member weights: learnt from unlabelled training rows alone,
deterministic for a seed, stored with the model, and loud where a member is useless."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from nexus.anomaly.detectors import Algorithm, AnomalyModel, EnsembleDetector, make_detector
from nexus.anomaly.detectors._ensemble import TAIL_SHARE, TailSurprise, agreement_weights

FAST = {"autoencoder.epochs": 20}


def clustered(seed: int, n: int = 500, k: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian cloud and a tight cluster of k outliers far from it, labelled 0 / 1.

    The cluster is as dense as the cloud's core, so LOF (20 neighbours, all in the cluster)
    sees its points as normal: on these data LOF is useless and every other member is perfect.
    """
    rng = np.random.default_rng(seed)
    cluster = rng.normal(size=(k, 6)) * 0.05 + 5.0
    return np.vstack([rng.normal(size=(n, 6)), cluster]), np.r_[np.zeros(n), np.ones(k)]


@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    return AnomalyModel.train(Algorithm.ENSEMBLE, clustered(1)[0], params=FAST, seed=3)


# Weights


def test_a_member_that_ranks_noise_weighs_nothing() -> None:
    signal = np.random.default_rng(0).normal(size=1000)
    noise = np.random.default_rng(1).normal(size=(4, 1000))
    rows = np.vstack([signal + 0.3 * noise[0], signal + 0.5 * noise[1], -signal, noise[3]])
    weights = agreement_weights(rows)
    assert weights[0] == 1.0
    assert weights[1] > 0.8
    assert weights[2] == 0.0  # ranks the rows backwards
    assert weights[3] < 0.15  # ranks them at random


def test_a_member_with_constant_scores_weighs_nothing() -> None:
    rising = np.arange(50.0)
    weights = agreement_weights(np.vstack([rising, np.ones(50), rising**2, np.sqrt(rising)]))
    assert list(weights) == [1.0, 0.0, 1.0, 1.0]


def test_fewer_than_three_members_weigh_one_each() -> None:
    """Two members' one correlation cannot say which of them is right."""
    rising = np.arange(50.0)
    assert list(agreement_weights(np.vstack([rising, -rising]))) == [1.0, 1.0]
    assert list(agreement_weights(rising[np.newaxis])) == [1.0]


def test_the_useless_member_is_turned_down_and_the_ensemble_gains(model: AnomalyModel) -> None:
    detector = model.detector
    assert isinstance(detector, EnsembleDetector)
    weights = detector.weights
    assert min(weights, key=lambda a: weights[a]) is Algorithm.LOCAL_OUTLIER_FACTOR
    assert weights[Algorithm.LOCAL_OUTLIER_FACTOR] < 0.9 * max(weights.values())
    points, labels = clustered(2)
    standard = model.standardizer.transform(points)
    lof = detector.members[Algorithm.LOCAL_OUTLIER_FACTOR].score(standard)
    assert roc_auc_score(labels, lof) < 0.5
    equal = AnomalyModel.train(
        Algorithm.ENSEMBLE, clustered(1)[0], params=FAST | {"weighting": "equal"}, seed=3
    )
    weighted_auc = roc_auc_score(labels, model.score(points)[0])
    assert weighted_auc > roc_auc_score(labels, equal.score(points)[0])
    assert weighted_auc > 0.99


def test_weights_are_deterministic_for_a_seed(model: AnomalyModel) -> None:
    again = AnomalyModel.train(Algorithm.ENSEMBLE, clustered(1)[0], params=FAST, seed=3)
    assert isinstance(again.detector, EnsembleDetector)
    assert isinstance(model.detector, EnsembleDetector)
    assert again.detector.weights == model.detector.weights
    points = clustered(2)[0]
    assert np.array_equal(again.score(points)[0], model.score(points)[0])


def test_equal_weighting_weighs_every_member_one() -> None:
    detector = make_detector(Algorithm.ENSEMBLE, {"weighting": "equal"} | FAST)
    assert isinstance(detector, EnsembleDetector)
    detector.fit(clustered(1)[0])
    assert set(detector.weights.values()) == {1.0}


def test_weights_travel_with_the_pickle(model: AnomalyModel) -> None:
    loaded = pickle.loads(pickle.dumps(model))
    assert isinstance(loaded.detector, EnsembleDetector)
    assert isinstance(model.detector, EnsembleDetector)
    assert loaded.detector.weights == model.detector.weights
    points = clustered(2)[0]
    assert np.array_equal(loaded.score(points)[0], model.score(points)[0])


def test_weights_are_reported_as_training_metrics(model: AnomalyModel) -> None:
    assert isinstance(model.detector, EnsembleDetector)
    metrics = model.detector.training_metrics()
    assert metrics == {f"weight.{a.value}": w for a, w in model.detector.weights.items()}
    assert make_detector(Algorithm.ISOLATION_FOREST).training_metrics() == {}


def test_members_of_weight_zero_are_not_asked() -> None:
    detector = make_detector(Algorithm.ENSEMBLE, {"members": "isolation_forest,autoencoder"})
    assert isinstance(detector, EnsembleDetector)
    x = clustered(1)[0]
    detector.fit(x)
    detector.weights[Algorithm.AUTOENCODER] = 0.0
    del detector.members[Algorithm.AUTOENCODER]._net  # would fail if it were asked
    forest = detector.members[Algorithm.ISOLATION_FOREST].score(x)
    calibrated = detector._normalisers[Algorithm.ISOLATION_FOREST](forest)
    assert np.array_equal(detector.score(x), calibrated)


# An ensemble stored before the weights existed


def test_an_ensemble_pickled_before_the_weights_scores_as_it_did() -> None:
    """Such a pickle holds one (mean, std) per member and no weights; it takes the maximum of
    the members' z-scores, as every stored ensemble did then."""
    x = clustered(1)[0]
    detector = make_detector(Algorithm.ENSEMBLE, {"members": "isolation_forest,one_class_svm"})
    assert isinstance(detector, EnsembleDetector)
    detector.fit(x)
    training = {a: m.fit_score(x) for a, m in detector.members.items()}
    state = {k: v for k, v in detector.__dict__.items() if k not in ("weights", "_normalisers")}
    state["_stats"] = {a: (float(s.mean()), float(s.std())) for a, s in training.items()}
    old = EnsembleDetector.__new__(EnsembleDetector)
    old.__setstate__(state)
    points = clustered(2)[0]
    z = [
        (m.score(points) - s.mean()) / s.std()
        for (a, m), s in zip(detector.members.items(), training.values(), strict=True)
    ]
    assert np.allclose(old.score(points), np.max(z, axis=0))


# Calibration


def test_surprise_follows_the_training_scores_then_an_exponential_tail() -> None:
    train = np.random.default_rng(4).exponential(2.0, size=20_000)
    surprise = TailSurprise(train)
    start = np.quantile(train, 1 - TAIL_SHARE)
    assert surprise(np.array([train.min() - 1.0]))[0] == 0.0
    assert surprise(np.array([start]))[0] == pytest.approx(-math.log(TAIL_SHARE))
    assert surprise(np.array([np.median(train)]))[0] == pytest.approx(math.log(2), abs=0.01)
    assert surprise.scale == pytest.approx(2.0, rel=0.05)  # an exponential's mean excess
    far = surprise(np.array([start + 10.0, start + 20.0, start + 1000.0]))
    assert far[1] - far[0] == pytest.approx(10.0 / surprise.scale)
    assert far[2] > far[1]  # far outside the training range still counts for more


def test_surprise_is_monotone_and_finite_for_any_training_scores() -> None:
    for train in (np.zeros(100), np.r_[np.zeros(95), np.ones(5)], np.arange(3.0)):
        surprise = TailSurprise(train)
        values = surprise(np.linspace(-5, 5, 101))
        assert np.isfinite(values).all()
        assert (np.diff(values) >= 0).all()
