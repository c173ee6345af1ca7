"""The detectors package: planted outliers, thresholds, explanations, input checks, pickling."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

from nexus.anomaly.detectors import (
    DEFAULT_ENSEMBLE_MEMBERS,
    Algorithm,
    AnomalyModel,
    AutoencoderDetector,
    EnsembleDetector,
    IsolationForestDetector,
    make_detector,
    param_specs,
    validate_labels,
    validate_matrix,
    validate_point,
)
from nexus.anomaly.detectors._sklearn import PathLengths
from nexus.common.errors import (
    REQUEST_TOO_LARGE,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)

N_FEATURES = 6
PLANTED = 3
ALGORITHMS = list(Algorithm)
FAST: dict[Algorithm, dict[str, Any]] = {
    Algorithm.AUTOENCODER: {"epochs": 10},
    Algorithm.ENSEMBLE: {"members": "isolation_forest,autoencoder", "autoencoder.epochs": 10},
}
"""Parameters that keep training short where a test is about something other than accuracy."""


def gaussian(n: int, seed: int, d: int = N_FEATURES) -> np.ndarray:
    """Normal points of one distribution (a correlated Gaussian, scaled and shifted per feature).

    The seed draws the points; the distribution is the same for every seed.
    """
    mixing = np.eye(d) + 0.3 * np.random.default_rng(0).normal(size=(d, d))
    points = np.random.default_rng(seed).normal(size=(n, d))
    return points @ mixing * np.arange(1, d + 1) + 10.0


def outliers(normal: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Points 6 to 9 standard deviations from the cloud's centre, in random directions."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n, normal.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = rng.uniform(6, 9, size=(n, 1))
    points: np.ndarray = normal.mean(axis=0) + directions * radii * normal.std(axis=0)
    return points


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return gaussian(600, seed=1)


@pytest.fixture(scope="module")
def test_set(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """200 new normal points and 20 planted outliers, labelled 0 / 1."""
    points = np.vstack([gaussian(200, seed=2), outliers(train, 20, seed=3)])
    return points, np.r_[np.zeros(200), np.ones(20)]


@pytest.fixture(scope="module")
def models(train: np.ndarray) -> dict[Algorithm, AnomalyModel]:
    """One model per algorithm, trained once for the module (the ensemble is the slow one)."""
    names = [f"f{j}" for j in range(N_FEATURES)]
    return {a: AnomalyModel.train(a, train, feature_names=names, seed=7) for a in ALGORITHMS}


# Accuracy and scores


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_separates_planted_outliers(
    models: dict[Algorithm, AnomalyModel], test_set: tuple[np.ndarray, np.ndarray], algorithm: Any
) -> None:
    points, labels = test_set
    scores, _ = models[algorithm].score(points)
    assert roc_auc_score(labels, scores) > 0.9


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_scores_are_one_float64_per_row_and_higher_for_outliers(
    models: dict[Algorithm, AnomalyModel], train: np.ndarray, algorithm: Any
) -> None:
    scores, flags = models[algorithm].score(np.vstack([train[:5], outliers(train, 5, seed=4)]))
    assert scores.shape == (10,)
    assert scores.dtype == np.float64
    assert flags.dtype == np.bool_
    assert scores[5:].min() > scores[:5].max()


def test_score_accepts_lists_as_well_as_arrays(models: dict[Algorithm, AnomalyModel]) -> None:
    model = models[Algorithm.ISOLATION_FOREST]
    rows = gaussian(3, seed=5)
    assert np.array_equal(model.score(rows.tolist())[0], model.score(rows)[0])


# Threshold and contamination


@pytest.mark.parametrize("contamination", [0.02, 0.1, 0.3])
@pytest.mark.parametrize(
    "algorithm", [Algorithm.ISOLATION_FOREST, Algorithm.ONE_CLASS_SVM, Algorithm.AUTOENCODER]
)
def test_threshold_flags_the_contamination_share_of_training_points(
    train: np.ndarray, algorithm: Algorithm, contamination: float
) -> None:
    model = AnomalyModel.train(
        algorithm, train, params=FAST.get(algorithm), contamination=contamination
    )
    _, flags = model.score(train)
    assert flags.mean() == pytest.approx(contamination, abs=0.01)


def test_more_contamination_means_a_lower_threshold(train: np.ndarray) -> None:
    low = AnomalyModel.train(Algorithm.ISOLATION_FOREST, train, contamination=0.05)
    high = AnomalyModel.train(Algorithm.ISOLATION_FOREST, train, contamination=0.3)
    assert high.threshold < low.threshold


def test_points_above_the_threshold_are_the_anomalies(
    models: dict[Algorithm, AnomalyModel], test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    model = models[Algorithm.ENSEMBLE]
    scores, flags = model.score(test_set[0])
    assert np.array_equal(flags, scores > model.threshold)
    assert flags[200:].all()  # every planted outlier
    assert flags[:200].mean() < 0.2


@pytest.mark.parametrize("contamination", [0.0, -0.1, 0.51, 1.0, math.nan])
def test_contamination_outside_zero_to_half_is_refused(
    train: np.ndarray, contamination: float
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        AnomalyModel.train(Algorithm.ISOLATION_FOREST, train, contamination=contamination)
    assert caught.value.violations[0].field == "contamination"


# Explanations


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_explain_puts_the_planted_feature_first(
    models: dict[Algorithm, AnomalyModel], train: np.ndarray, algorithm: Any
) -> None:
    point = gaussian(1, seed=12)[0]  # an ordinary point, then one feature far out
    point[PLANTED] += 7 * train[:, PLANTED].std()
    contributions = models[algorithm].explain(point)
    assert contributions[0].index == PLANTED
    assert contributions[0].name == f"f{PLANTED}"
    assert contributions[0].value == point[PLANTED]
    assert contributions[0].contribution > 0
    assert sorted(c.index for c in contributions) == list(range(N_FEATURES))
    drops = [c.contribution for c in contributions]
    assert drops == sorted(drops, reverse=True)


def test_explain_names_features_by_index_without_names(train: np.ndarray) -> None:
    model = AnomalyModel.train(Algorithm.ISOLATION_FOREST, train)
    assert {c.name for c in model.explain(train[0])} == {f"feature_{j}" for j in range(6)}


def test_explain_refuses_a_point_of_another_width(
    models: dict[Algorithm, AnomalyModel],
) -> None:
    with pytest.raises(InvalidArgument, match="has 4 values; the model expects 6"):
        models[Algorithm.ISOLATION_FOREST].explain([1.0, 2.0, 3.0, 4.0])


# Input validation


def test_validate_matrix_returns_a_float64_matrix() -> None:
    matrix = validate_matrix([[1, 2], [3, 4]])
    assert matrix.dtype == np.float64
    assert matrix.shape == (2, 2)


@pytest.mark.parametrize(
    ("rows", "field", "message"),
    [
        ([[1.0, 2.0], [3.0, math.nan]], "points[1].values[1]", "is NaN"),
        ([[1.0, math.inf], [3.0, 4.0]], "points[0].values[1]", "is infinite"),
        ([[1.0, 2.0], [3.0, -math.inf]], "points[1].values[1]", "is infinite"),
        ([[1.0, 2.0, 3.0], [4.0, 5.0]], "points[1].values", "has 2 values where points[0]"),
        ([[1.0, 2.0], []], "points[1].values", "has no values"),
        ([[]], "points[0].values", "has no values"),
        ([], "points", "is empty"),
        ([[1.0, "x"]], "points[0].values[1]", "is not a number"),
        ([1.0, 2.0], "points[0].values", "must be a list of numbers"),
    ],
)
def test_validate_matrix_says_what_is_wrong_and_where(
    rows: list[Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_matrix(rows)
    assert caught.value.violations[0].field == field
    assert message in caught.value.violations[0].description
    assert field in str(caught.value)


def test_validate_matrix_reports_the_models_width() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_matrix([[1.0, 2.0, 3.0]], n_features=2)
    assert str(caught.value) == "points[0].values: has 3 values; the model expects 2"


def test_validate_matrix_refuses_a_flat_array() -> None:
    with pytest.raises(InvalidArgument, match="2-D matrix"):
        validate_matrix(np.zeros(3))


def test_validate_matrix_names_rows_without_a_values_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_matrix([[1.0], [math.nan]], field="rows", row_field="")
    assert caught.value.violations[0].field == "rows[1][0]"


def test_too_many_rows_is_resource_exhausted() -> None:
    with pytest.raises(ResourceExhausted) as caught:
        validate_matrix(np.zeros((11, 2)), max_rows=10)
    assert caught.value.reason == REQUEST_TOO_LARGE
    assert "11" in str(caught.value)
    assert "10" in str(caught.value)


def test_too_many_features_is_resource_exhausted() -> None:
    with pytest.raises(ResourceExhausted) as caught:
        validate_matrix([[0.0] * 5], max_features=4)
    assert caught.value.reason == REQUEST_TOO_LARGE
    assert "points[0].values" in str(caught.value)


def test_limits_at_their_value_pass() -> None:
    assert validate_matrix(np.zeros((10, 4)), max_rows=10, max_features=4).shape == (10, 4)


def test_validate_point_names_the_value() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_point([1.0, math.nan], field="point.values")
    assert caught.value.violations[0].field == "point.values[1]"


def test_validate_point_refuses_a_matrix() -> None:
    with pytest.raises(InvalidArgument, match="flat list"):
        validate_point(np.zeros((2, 2)))


@pytest.mark.parametrize(
    ("labels", "message"), [([0, 1], "has 2 labels for 3"), ([0, 2, 1], "labels[1]")]
)
def test_validate_labels_refuses_bad_labels(labels: list[int], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[")):
        validate_labels(labels, 3)


def test_score_refuses_points_of_another_width(models: dict[Algorithm, AnomalyModel]) -> None:
    with pytest.raises(InvalidArgument, match="the model expects 6"):
        models[Algorithm.ISOLATION_FOREST].score(np.zeros((2, 5)))


def test_training_needs_two_points() -> None:
    with pytest.raises(InvalidArgument, match="at least 2"):
        AnomalyModel.train(Algorithm.ISOLATION_FOREST, [[1.0, 2.0]])


def test_training_refuses_nan(train: np.ndarray) -> None:
    bad = train.copy()
    bad[4, 2] = math.nan
    with pytest.raises(InvalidArgument) as caught:
        AnomalyModel.train(Algorithm.ISOLATION_FOREST, bad)
    assert caught.value.violations[0].field == "points[4].values[2]"


def test_feature_names_must_match_the_width(train: np.ndarray) -> None:
    with pytest.raises(InvalidArgument, match="has 2 names for 6 features"):
        AnomalyModel.train(Algorithm.ISOLATION_FOREST, train, feature_names=["a", "b"])


def test_feature_names_must_be_distinct() -> None:
    with pytest.raises(InvalidArgument, match="repeats 'a'"):
        AnomalyModel(Algorithm.ISOLATION_FOREST, feature_names=["a", "b", "a"])


def test_an_untrained_model_cannot_score() -> None:
    with pytest.raises(FailedPrecondition):
        AnomalyModel(Algorithm.ISOLATION_FOREST).score([[1.0]])


# Parameters


def test_unknown_algorithm_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as caught:
        AnomalyModel("kmeans")
    assert caught.value.violations[0].field == "algorithm"


def test_unknown_parameter_is_invalid_and_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgument) as caught:
        make_detector(Algorithm.ISOLATION_FOREST, {"n_trees": 10})
    assert caught.value.violations[0].field == "params.n_trees"
    assert "n_estimators" in caught.value.violations[0].description


@pytest.mark.parametrize(
    ("algorithm", "params", "field"),
    [
        (Algorithm.ISOLATION_FOREST, {"n_estimators": "0"}, "params.n_estimators"),
        (Algorithm.ISOLATION_FOREST, {"n_estimators": "many"}, "params.n_estimators"),
        (Algorithm.ISOLATION_FOREST, {"max_samples": "1.5"}, "params.max_samples"),
        (Algorithm.ONE_CLASS_SVM, {"nu": 0}, "params.nu"),
        (Algorithm.ONE_CLASS_SVM, {"gamma": "wide"}, "params.gamma"),
        (Algorithm.LOCAL_OUTLIER_FACTOR, {"n_neighbors": 2.5}, "params.n_neighbors"),
        (Algorithm.AUTOENCODER, {"learning_rate": "nan"}, "params.learning_rate"),
        (Algorithm.AUTOENCODER, {"device": "tpu"}, "params.device"),
        (Algorithm.ENSEMBLE, {"members": "isolation_forest,kmeans"}, "params.members"),
        (Algorithm.ENSEMBLE, {"members": "ensemble"}, "params.members"),
        (Algorithm.ENSEMBLE, {"combination": "vote"}, "params.combination"),
        (Algorithm.ENSEMBLE, {"weighting": "votes"}, "params.weighting"),
        (Algorithm.ENSEMBLE, {"isolation_forest.n_estimators": "-1"}, "params.isolation_forest"),
        (
            Algorithm.ENSEMBLE,
            {"members": "isolation_forest", "autoencoder.epochs": "3"},
            "params.autoencoder.epochs",
        ),
    ],
)
def test_bad_parameter_values_name_the_parameter(
    algorithm: Algorithm, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        make_detector(algorithm, params)
    assert caught.value.violations[0].field.startswith(field)


def test_defaults_match_pyod() -> None:
    defaults = {a: {s.name: s.default for s in param_specs(a)} for a in Algorithm}
    assert defaults[Algorithm.ISOLATION_FOREST]["n_estimators"] == 100
    assert defaults[Algorithm.ISOLATION_FOREST]["max_samples"] == "auto"
    svm = defaults[Algorithm.ONE_CLASS_SVM]
    assert (svm["kernel"], svm["nu"], svm["gamma"]) == ("rbf", 0.5, "auto")
    assert defaults[Algorithm.LOCAL_OUTLIER_FACTOR]["n_neighbors"] == 20


def test_text_parameters_are_parsed_to_their_types() -> None:
    detector = make_detector(
        Algorithm.ISOLATION_FOREST, {"n_estimators": "25", "max_samples": "0.5", "bootstrap": "yes"}
    )
    assert detector.params == {
        "n_estimators": 25,
        "max_samples": 0.5,
        "max_features": 1.0,
        "bootstrap": True,
    }


def test_ensemble_routes_member_parameters(train: np.ndarray) -> None:
    detector = make_detector(
        Algorithm.ENSEMBLE,
        {"members": "isolation_forest, local_outlier_factor", "isolation_forest.n_estimators": 7},
    )
    assert isinstance(detector, EnsembleDetector)
    assert list(detector.members) == [Algorithm.ISOLATION_FOREST, Algorithm.LOCAL_OUTLIER_FACTOR]
    assert detector.params["isolation_forest.n_estimators"] == 7
    detector.fit(train)
    forest = detector.members[Algorithm.ISOLATION_FOREST]
    assert isinstance(forest, IsolationForestDetector)
    assert len(forest._forest.estimators_) == 7


def test_default_ensemble_has_every_single_detector() -> None:
    detector = make_detector(Algorithm.ENSEMBLE)
    assert isinstance(detector, EnsembleDetector)
    assert tuple(detector.members) == DEFAULT_ENSEMBLE_MEMBERS
    assert set(DEFAULT_ENSEMBLE_MEMBERS) == set(Algorithm) - {Algorithm.ENSEMBLE}


def test_ensemble_mean_combination_differs_from_max(train: np.ndarray) -> None:
    points = outliers(train, 10, seed=8)
    by = {
        c: AnomalyModel.train(
            Algorithm.ENSEMBLE,
            train,
            params={"combination": c, "members": "isolation_forest,local_outlier_factor"},
        ).score(points)[0]
        for c in ("max", "mean")
    }
    assert np.all(by["max"] >= by["mean"])
    assert not np.allclose(by["max"], by["mean"])


# Pickling and determinism


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_pickle_round_trip_gives_identical_scores(
    models: dict[Algorithm, AnomalyModel], test_set: tuple[np.ndarray, np.ndarray], algorithm: Any
) -> None:
    model = models[algorithm]
    loaded = pickle.loads(pickle.dumps(model))
    assert np.array_equal(loaded.score(test_set[0])[0], model.score(test_set[0])[0])
    assert loaded.threshold == model.threshold
    assert loaded.feature_names == model.feature_names
    assert loaded.explain(test_set[0][-1]) == model.explain(test_set[0][-1])


def test_the_autoencoder_pickles_without_torch_objects(
    models: dict[Algorithm, AnomalyModel],
) -> None:
    assert b"torch" not in pickle.dumps(models[Algorithm.AUTOENCODER])


@pytest.mark.parametrize(
    "algorithm", [Algorithm.ISOLATION_FOREST, Algorithm.AUTOENCODER, Algorithm.ENSEMBLE]
)
def test_same_seed_same_scores_other_seed_other_scores(
    train: np.ndarray, test_set: tuple[np.ndarray, np.ndarray], algorithm: Algorithm
) -> None:
    scores = [
        AnomalyModel.train(algorithm, train, params=FAST.get(algorithm), seed=s).score(test_set[0])[
            0
        ]
        for s in (3, 3, 4)
    ]
    assert np.array_equal(scores[0], scores[1])
    assert not np.allclose(scores[0], scores[2])


# Metrics


def test_validation_metrics_with_labels(
    models: dict[Algorithm, AnomalyModel], test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    metrics = models[Algorithm.ENSEMBLE].validation_metrics(*test_set)
    assert metrics["roc_auc"] > 0.9
    assert metrics["average_precision"] > 0.5
    assert metrics["recall"] == 1.0
    assert metrics["anomaly_rate"] == pytest.approx(
        models[Algorithm.ENSEMBLE].score(test_set[0])[1].mean()
    )
    quantiles = [metrics[f"score_{q}"] for q in ("min", "p50", "p90", "p99", "max")]
    assert quantiles == sorted(quantiles)


def test_validation_metrics_without_labels_have_no_ranking_metrics(
    models: dict[Algorithm, AnomalyModel], test_set: tuple[np.ndarray, np.ndarray]
) -> None:
    metrics = models[Algorithm.ISOLATION_FOREST].validation_metrics(test_set[0])
    assert "roc_auc" not in metrics
    assert "precision" not in metrics
    assert metrics["threshold"] == models[Algorithm.ISOLATION_FOREST].threshold
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_validation_metrics_with_one_class_skip_auc(
    models: dict[Algorithm, AnomalyModel], train: np.ndarray
) -> None:
    metrics = models[Algorithm.ISOLATION_FOREST].validation_metrics(train[:50], np.zeros(50))
    assert "roc_auc" not in metrics
    assert metrics["precision"] == 0.0


# Edge cases of the data


def test_a_constant_training_feature_that_changes_is_anomalous() -> None:
    data = gaussian(300, seed=9, d=3)
    data[:, 1] = 5.0
    model = AnomalyModel.train(Algorithm.ONE_CLASS_SVM, data)
    changed = data[:20].copy()
    changed[:, 1] = 9.0
    scores, flags = model.score(changed)
    assert flags.all()
    assert scores.min() > model.score(data[:20])[0].max()


def test_lof_trains_on_fewer_points_than_neighbours() -> None:
    model = AnomalyModel.train(Algorithm.LOCAL_OUTLIER_FACTOR, gaussian(5, seed=10))
    assert model.score(gaussian(2, seed=11))[0].shape == (2,)


def test_autoencoder_leaves_torch_threads_as_it_found_them(train: np.ndarray) -> None:
    before = torch.get_num_threads()
    AutoencoderDetector({"threads": 1, "epochs": 1}).fit(train)
    assert torch.get_num_threads() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_autoencoder_on_cuda_without_a_gpu_is_invalid(train: np.ndarray) -> None:
    with pytest.raises(InvalidArgument, match="no GPU"):
        AutoencoderDetector({"device": "cuda"}).fit(train)


def test_autoencoder_auto_device_trains_where_it_can(train: np.ndarray) -> None:
    detector = AutoencoderDetector({"device": "auto", "epochs": 2})
    detector.fit(train)
    assert detector.score(train[:3]).shape == (3,)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_features": 0.5},
        {"max_features": 0.7, "max_samples": 64},
        {"max_samples": 0.3, "contamination": 0.05},
        {"bootstrap": True, "contamination": 0.2, "n_estimators": 37},
        {"bootstrap": True, "max_features": 0.4, "max_samples": 1.0},
        {"max_samples": 1},  # one sample: every score 1, as sklearn sets it
    ],
)
def test_path_length_tables_score_exactly_as_sklearn_does(options: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(2000, 6)) * [1, 10, 0.1, 1, 1, 1000]
    probe = np.vstack(
        [2 * rng.normal(size=(300, 6)) * [1, 10, 0.1, 1, 1, 1000], train[:50], 1e30 * train[:3]]
    )
    forest = IsolationForest(random_state=1, n_jobs=1, **options).fit(train)
    np.testing.assert_array_equal(
        PathLengths(forest).anomaly_scores(probe), -forest.score_samples(probe)
    )


def test_a_loaded_forest_scores_as_the_one_saved() -> None:
    rng = np.random.default_rng(2)
    detector = IsolationForestDetector({"max_features": 0.5})
    detector.fit(rng.normal(size=(500, 4)))
    probe = rng.normal(size=(40, 4))
    loaded = pickle.loads(pickle.dumps(detector))
    np.testing.assert_array_equal(loaded.score(probe), detector.score(probe))
