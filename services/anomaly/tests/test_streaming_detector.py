"""The online streaming detector: warm-up, spikes, clean statistics, width changes, pickling."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from nexus.anomaly.detectors import StreamingDetector, StreamingDetectors, StreamingScore
from nexus.common.errors import InvalidArgument, NotFound


def series(n: int, seed: int = 0, d: int = 3) -> np.ndarray:
    """Normal metric points: each feature around its own level with its own noise."""
    rng = np.random.default_rng(seed)
    return 100.0 * np.arange(1, d + 1) + rng.normal(size=(n, d)) * np.arange(1, d + 1)


def feed(detector: StreamingDetector, points: np.ndarray) -> list[StreamingScore]:
    return [detector.update(p) for p in points]


def spike(point: np.ndarray, feature: int, size: float) -> np.ndarray:
    """`point` with `feature` moved by `size` of that feature's noise."""
    moved = point.copy()
    moved[feature] += size * (feature + 1)
    return moved


def test_no_anomaly_before_the_warm_up_even_for_a_spike() -> None:
    detector = StreamingDetector(warmup=30)
    results = feed(detector, series(10))
    result = detector.update(spike(series(1, seed=1)[0], 1, 50))
    assert result.score > detector.threshold
    assert not result.is_anomaly
    assert not result.warmed_up
    assert not any(r.is_anomaly for r in results)


def test_a_spike_after_the_warm_up_is_flagged_with_its_feature() -> None:
    detector = StreamingDetector(warmup=30)
    results = feed(detector, series(60))
    result = detector.update(spike(series(1, seed=1)[0], 2, 10))
    assert result.is_anomaly
    assert result.warmed_up
    assert result.feature == 2
    assert result.threshold == detector.threshold
    assert sum(r.is_anomaly for r in results[30:]) <= 1  # normal points stay quiet


def test_first_point_scores_zero() -> None:
    result = StreamingDetector().update([1.0, 2.0])
    assert result == StreamingScore(0.0, False, 4.0, False, -1)


def test_warm_up_statistics_are_the_exact_mean_and_deviation() -> None:
    points = series(12)
    detector = StreamingDetector(warmup=100)
    feed(detector, points[:11])
    expected = np.abs(points[11] - points[:11].mean(axis=0)) / points[:11].std(axis=0)
    assert detector.update(points[11]).score == pytest.approx(expected.max())


def test_a_spike_does_not_poison_the_statistics() -> None:
    detector = StreamingDetector(warmup=30)
    normal = series(80)
    feed(detector, normal[:60])
    assert detector.update(spike(normal[60], 0, 1000)).is_anomaly
    after = feed(detector, normal[61:70])
    assert not any(r.is_anomaly for r in after)
    # Unclipped, the huge spike would have inflated the variance and hidden this one.
    assert detector.update(spike(normal[70], 0, 8)).is_anomaly


def test_a_lasting_level_shift_is_absorbed() -> None:
    detector = StreamingDetector(warmup=30)
    normal = series(200)
    feed(detector, normal[:60])
    shifted = normal[60:] + np.array([0.0, 40.0, 0.0])
    results = feed(detector, shifted)
    assert results[0].is_anomaly
    assert not any(r.is_anomaly for r in results[40:])


def test_a_constant_series_that_moves_scores_finite_and_flags() -> None:
    detector = StreamingDetector(warmup=5)
    feed(detector, np.full((10, 2), 7.0))
    result = detector.update([7.0, 7.5])
    assert math.isfinite(result.score)
    assert result.is_anomaly
    assert result.feature == 1


def test_width_change_resets_by_default() -> None:
    detector = StreamingDetector(warmup=5)
    feed(detector, series(10, d=3))
    result = detector.update([1.0, 2.0])
    assert detector.n_features == 2
    assert detector.n_seen == 1
    assert not result.warmed_up


def test_width_change_can_be_refused_and_keeps_the_state() -> None:
    detector = StreamingDetector(warmup=5, on_width_change="error")
    feed(detector, series(10, d=3))
    with pytest.raises(InvalidArgument, match="has 2 values; this stream's points have 3"):
        detector.update([1.0, 2.0])
    assert detector.n_features == 3
    assert detector.n_seen == 10


def test_bad_values_are_invalid_and_named() -> None:
    detector = StreamingDetector()
    with pytest.raises(InvalidArgument) as caught:
        detector.update([1.0, math.nan])
    assert caught.value.violations[0].field == "values[1]"
    with pytest.raises(InvalidArgument, match="has no values"):
        detector.update([])
    assert detector.n_seen == 0


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": math.inf}, "threshold"),
        ({"warmup": 1}, "warmup"),
        ({"warmup": 2.5}, "warmup"),
        ({"on_width_change": "ignore"}, "on_width_change"),
    ],
)
def test_settings_are_checked(settings: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        StreamingDetector(**settings)  # type: ignore[arg-type]
    assert caught.value.violations[0].field == field


def test_pickle_round_trip_continues_identically() -> None:
    detector = StreamingDetector(warmup=10)
    points = series(40)
    feed(detector, points[:20])
    copy = pickle.loads(pickle.dumps(detector))
    assert feed(copy, points[20:]) == feed(detector, points[20:])


def test_the_state_is_small() -> None:
    detector = StreamingDetector()
    feed(detector, series(1000, d=4))
    assert len(pickle.dumps(detector)) < 1000


def test_detectors_keep_one_stream_per_source() -> None:
    pool = StreamingDetectors(warmup=5)
    for point in series(10):
        pool.update("a", point)
    pool.update("b", [1.0])
    assert pool.get("a").n_seen == 10
    assert pool.get("b").n_features == 1
    assert pool.update("a", spike(series(1, seed=3)[0], 0, 20)).is_anomaly


def test_unknown_source_is_not_found() -> None:
    pool = StreamingDetectors()
    with pytest.raises(NotFound):
        pool.get("nope")
    with pytest.raises(NotFound):
        pool.remove("nope")


def test_the_least_recently_updated_source_is_forgotten_beyond_the_limit() -> None:
    pool = StreamingDetectors(max_sources=2)
    pool.update("a", [1.0])
    pool.update("b", [1.0])
    pool.update("a", [1.0])
    pool.update("c", [1.0])
    assert pool.sources() == ["a", "c"]
    assert len(pool) == 2


def test_pool_settings_are_checked_up_front() -> None:
    with pytest.raises(InvalidArgument):
        StreamingDetectors(alpha=2.0)


def test_values_at_the_float_limit_keep_the_statistics_finite() -> None:
    detector = StreamingDetector(warmup=3)
    for value in [1e308, -1e308, 1.0, 2.0]:  # of both signs during the warm-up
        detector.update([value])
    extreme = detector.update([-1e308])
    after = detector.update([1.5])

    assert np.isfinite(detector._mean).all()
    assert np.isfinite(detector._var).all()
    assert extreme.is_anomaly
    assert np.isfinite(extreme.score)
    assert np.isfinite(after.score)
