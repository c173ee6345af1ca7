"""The 'tails' streaming detector and the per-source wrapper, on generated series."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from nexus.anomaly.detectors.online import (
    DEFAULT_SUPPRESS,
    KINDS,
    MAX_STATE_BYTES,
    ExtremeTails,
    SourceDetector,
    decode_state,
    default_threshold,
    encode_state,
    online_factory,
)
from nexus.anomaly.detectors.online._periods import dominant_period
from nexus.anomaly.evaluation import suppressed_flags
from nexus.common.errors import InvalidArgument

DAY = 288  # five-minute steps
DEFAULT_THRESHOLD = ExtremeTails.DEFAULT_THRESHOLD


def _daily(n: int = 4000, noise: float = 0.5, seed: int = 0, gaussian: bool = False) -> np.ndarray:
    """A daily sine with noise: uniform (bounded) by default, like NAB's artificial series."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    wobble = rng.normal(0, noise, n) if gaussian else rng.uniform(-noise, noise, n)
    return 50 + 20 * np.sin(2 * np.pi * t / DAY) + wobble


def _likelihoods(values: np.ndarray, **params: int | float) -> np.ndarray:
    detector = ExtremeTails(params)
    return np.array([detector.update(v) for v in values.tolist()])


def test_likelihoods_lie_in_0_1_and_are_0_while_learning() -> None:
    out = _likelihoods(np.random.default_rng(1).lognormal(size=1000))
    assert np.all((out >= 0) & (out <= 1))
    assert not out[:150].any()


def test_a_clean_daily_series_raises_nothing() -> None:
    assert (_likelihoods(_daily(noise=0.0)) >= DEFAULT_THRESHOLD).sum() == 0


@pytest.mark.parametrize("gaussian", [False, True])
def test_noise_crosses_the_default_threshold_about_as_often_as_it_says(gaussian: bool) -> None:
    # a flagged point's probability is 1/1000 or less, in one of three views: a few in 4000
    likelihood = _likelihoods(_daily(gaussian=gaussian))
    assert suppressed_flags(likelihood, DEFAULT_THRESHOLD, DEFAULT_SUPPRESS).sum() <= _RATE_BOUND


_RATE_BOUND = 4000 * 3 * (1 - DEFAULT_THRESHOLD)


@pytest.mark.parametrize(
    "anomaly",
    ["spike", "drop_within_range", "flat_stretch", "level_shift"],
)
def test_an_anomaly_in_a_daily_series_is_found_where_it_starts(anomaly: str) -> None:
    values = _daily()
    start = 3000
    if anomaly == "spike":
        values[start] += 40
    elif anomaly == "drop_within_range":  # a day's peak that does not come
        values[start : start + 60] = 50 + np.random.default_rng(2).normal(0, 0.5, 60)
        start = int(np.argmax(np.abs(values[start:] - _daily()[start:]) > 5)) + start
    elif anomaly == "flat_stretch":
        values[start : start + 100] = values[start]
    else:
        values[start:] += 60
    out = _likelihoods(values)
    flagged = np.flatnonzero(out >= DEFAULT_THRESHOLD)
    found = flagged[flagged >= start]
    assert len(found), flagged
    assert found[0] <= start + 15, found[:5]
    assert len(flagged) - len(found) <= _RATE_BOUND


def test_a_period_is_found_in_a_seasonal_series_and_none_in_noise() -> None:
    assert abs(dominant_period(_daily(2000)) - DAY) <= 2
    assert dominant_period(np.random.default_rng(3).normal(size=2000)) == 0
    assert dominant_period(np.full(500, 3.0)) == 0


@pytest.mark.parametrize(
    ("kind", "params"),
    [("tails", {}), ("ensemble", {"tails.window": 500, "context.learning": 200})],
)
def test_a_detector_resumed_from_its_saved_state_continues_exactly(
    kind: str, params: dict[str, int]
) -> None:
    make = online_factory(kind, params)
    values = _daily(3000, seed=4).tolist()
    whole = make()
    expected = [whole.update(v) for v in values]
    first = make()
    head = [first.update(v) for v in values[:1700]]
    resumed = make()
    resumed.set_state(decode_state(encode_state(first.get_state())))
    assert head + [resumed.update(v) for v in values[1700:]] == expected
    assert whole.params == (params or whole.params)


def test_the_state_stays_bounded_on_a_long_stream() -> None:
    detector = ExtremeTails()
    for v in np.random.default_rng(5).normal(size=30_000).tolist():
        detector.update(v)
    state = detector.get_state()
    assert all(len(a) <= 2000 for k, a in state.items() if k != "scalars")
    assert len(encode_state(state)) < MAX_STATE_BYTES


def test_a_state_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="not an extreme-tails state"):
        ExtremeTails().set_state({"values": np.zeros(3)})
    big = ExtremeTails().get_state() | {"values": np.zeros(5000)}
    with pytest.raises(ValueError, match="larger"):
        ExtremeTails().set_state(big)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"window": 10}, "params.window"),
        ({"tail_share": 0}, "params.tail_share"),
        ({"period": -1}, "params.period"),
        ({"colour": 1}, "params.colour"),
    ],
)
def test_bad_parameters_name_the_parameter(params: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        online_factory("tails", params)
    assert field in str(err.value)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown streaming detector"):
        online_factory("htm")


def test_a_source_flags_an_event_once_then_stays_quiet_for_suppress_points() -> None:
    source = SourceDetector(online_factory("tails"), threshold=0.999, suppress=50)
    values = _daily(3200)
    values[3000:3040] += 80  # one event forty points long
    verdicts = [source.update([v]) for v in values.tolist()]
    flagged = [i for i, v in enumerate(verdicts) if v.is_anomaly and i >= 2950]
    assert flagged
    assert flagged[0] == 3000
    assert all(i >= 3050 for i in flagged[1:])


def test_a_source_takes_the_most_anomalous_of_its_values() -> None:
    source = SourceDetector(online_factory("tails"), threshold=0.999, suppress=0)
    rng = np.random.default_rng(6)
    for _ in range(500):
        source.update([rng.normal(), rng.normal()])
    verdict = source.update([0.0, 40.0])
    assert verdict.is_anomaly
    assert verdict.feature == 1


def test_a_source_resumed_from_its_state_keeps_its_suppression() -> None:
    source = SourceDetector(online_factory("tails"), threshold=0.999, suppress=50)
    values = _daily(3100, noise=0.0).tolist()
    for v in values[:3000]:
        source.update([v])
    assert source.update([values[3000] + 80]).is_anomaly
    resumed = SourceDetector(online_factory("tails"), threshold=0.999, suppress=50)
    resumed.set_state(decode_state(encode_state(source.get_state())))
    assert not resumed.update([values[3001] + 200]).is_anomaly


@pytest.mark.parametrize(("threshold", "suppress"), [(0.0, 0), (1.5, 0), (0.9, -1)])
def test_a_source_refuses_bad_settings(threshold: float, suppress: int) -> None:
    with pytest.raises(InvalidArgument):
        SourceDetector(online_factory("tails"), threshold=threshold, suppress=suppress)


def test_the_ensemble_finds_what_either_member_finds() -> None:
    values = _daily()
    values[3000] += 40
    out = np.array(_run("ensemble", values))
    assert out[3000] >= default_threshold("ensemble")
    assert (out[:3000] >= default_threshold("ensemble")).sum() == 0


@pytest.mark.parametrize("name", ["window", "tails.colour", "htm.window", "tails."])
def test_the_ensemble_refuses_parameters_of_no_member(name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        online_factory("ensemble", {name: 1})
    assert name in str(err.value)


def _run(kind: str, values: np.ndarray) -> list[float]:
    detector = online_factory(kind)()
    return [detector.update(v) for v in values.tolist()]


_EXTREME = {
    "huge_spikes": [*np.random.default_rng(8).normal(size=400), 1e300, -1e300, 1.7e308, -1.7e308],
    "huge_values": list(np.random.default_rng(9).normal(size=500) * 1e305),
    "tiny_values": list(np.random.default_rng(10).normal(size=500) * 1e-300),
    "constant_then_huge": [5.0] * 400 + [1e200] * 100,
    "alternating_extremes": [1.7e308 if i % 2 else -1.7e308 for i in range(500)],
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("series", sorted(_EXTREME))
def test_every_kind_takes_any_finite_value(kind: str, series: str) -> None:
    source = SourceDetector(online_factory(kind), threshold=0.999, suppress=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way either
        verdicts = [source.update([v, v / 3]) for v in _EXTREME[series]]
    assert all(0.0 <= v.likelihood <= 1.0 for v in verdicts)
    resumed = SourceDetector(online_factory(kind), threshold=0.999, suppress=0)
    resumed.set_state(decode_state(encode_state(source.get_state())))
    assert resumed.update([1.0, 1.0]) == source.update([1.0, 1.0])
