"""The adaptive-resonance streaming detector (`resonance`) and the ensemble it is a third member
of (`ensemble_resonance`), on generated series."""

from __future__ import annotations

import numpy as np
import pytest
from test_tails_detector import DAY, _daily

from nexus.anomaly.detectors.online import (
    KINDS,
    MAX_STATE_BYTES,
    AdaptiveResonance,
    ExtremeTails,
    SourceDetector,
    TailsContextResonance,
    decode_state,
    encode_state,
    online_factory,
)
from nexus.anomaly.streamconfig import config_from_json, streaming_config
from nexus.common.errors import InvalidArgument


def test_resonance_kinds_are_registered_and_built_by_the_factory() -> None:
    assert KINDS["resonance"] is AdaptiveResonance
    assert isinstance(online_factory("resonance", {"window": "4"})(), AdaptiveResonance)
    ensemble = online_factory("ensemble_resonance", {"resonance.vigilance": 0.9})()
    assert isinstance(ensemble, TailsContextResonance)
    assert ensemble.params == {"resonance.vigilance": 0.9}


def test_likelihoods_lie_in_0_1_and_are_0_while_learning() -> None:
    values = np.random.default_rng(1).lognormal(size=3000)
    out = AdaptiveResonance({"learning": 200}).update_many(values)
    assert np.all((out >= 0) & (out <= 1))
    assert not out[:200].any()
    assert out[200:].any()


def test_one_value_at_a_time_gives_what_a_series_at_once_gives() -> None:
    values = np.random.default_rng(2).normal(size=700)
    detector = AdaptiveResonance({"categories": 20})
    one_by_one = [detector.update(v) for v in values.tolist()]
    assert np.array_equal(one_by_one, AdaptiveResonance({"categories": 20}).update_many(values))


def test_a_clean_daily_series_stays_below_its_threshold() -> None:
    out = AdaptiveResonance().update_many(_daily())
    assert out[DAY:].max() < AdaptiveResonance.DEFAULT_THRESHOLD


def test_a_new_shape_within_the_range_is_flagged() -> None:
    values = _daily()
    at = 3000
    values[at : at + 8] += np.array([6.0, -6.0] * 4)  # a zigzag: every value an ordinary level
    out = AdaptiveResonance().update_many(values)
    assert out[at : at + 10].max() >= AdaptiveResonance.DEFAULT_THRESHOLD
    assert out[DAY:at].max() < AdaptiveResonance.DEFAULT_THRESHOLD


def test_a_recurring_shape_is_learnt() -> None:
    values = _daily(n=6000)
    for start in range(3000, 6000, 100):  # the zigzag every 100 values
        values[start : start + 8] += np.array([6.0, -6.0] * 4)
    out = AdaptiveResonance().update_many(values)
    assert out[3000:3010].max() >= AdaptiveResonance.DEFAULT_THRESHOLD
    assert out[4500:].max() < AdaptiveResonance.DEFAULT_THRESHOLD


@pytest.mark.parametrize("params", [{}, {"categories": 3, "memory": 100, "learning": 10}])
def test_resumes_exactly_from_its_encoded_state(params: dict[str, int]) -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([_daily(1500), rng.lognormal(4, 1, 1500), rng.normal(0, 40, 500)])
    whole = AdaptiveResonance(params).update_many(values)
    for stop in (5, 120, 2600):  # before the first pattern, while learning, after replacements
        first = AdaptiveResonance(params)
        head = first.update_many(values[:stop])
        second = AdaptiveResonance(params)
        second.set_state(decode_state(encode_state(first.get_state())))
        assert np.array_equal(np.concatenate([head, second.update_many(values[stop:])]), whole)


def test_state_stays_within_its_bound() -> None:
    detector = AdaptiveResonance({"vigilance": 0.999, "window": 64, "categories": 300})
    detector.update_many(np.random.default_rng(4).standard_cauchy(5000))
    state = detector.get_state()
    assert len(state["categories"]) == 300
    assert len(encode_state(state)) <= detector.state_bound() <= MAX_STATE_BYTES


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"window": 1}, "params.window"),
        ({"vigilance": 0}, "params.vigilance"),
        ({"vigilance": 1.5}, "params.vigilance"),
        ({"rate": "fast"}, "params.rate"),
        ({"memory": 99}, "params.memory"),
        ({"categories": 2000, "window": 64}, "params.categories"),  # 2 MB of categories
    ],
)
def test_rejects_bad_parameters(params: dict[str, int | str], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        AdaptiveResonance(params)
    assert field in str(err.value)


def test_refuses_a_state_of_other_parameters() -> None:
    detector = AdaptiveResonance({"learning": 50})
    detector.update_many(_daily(500))
    with pytest.raises(ValueError, match="does not fit"):
        AdaptiveResonance({"window": 4}).set_state(detector.get_state())
    with pytest.raises(ValueError, match="not a resonance detector's state"):
        AdaptiveResonance().set_state({"categories": detector.get_state()["categories"]})
    broken = detector.get_state()
    broken["mismatches"][0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        AdaptiveResonance({"learning": 50}).set_state(broken)


def test_the_ensemble_with_resonance_is_the_noisy_or_of_its_members() -> None:
    values = _daily(n=1500)
    values[1200:1208] += np.array([6.0, -6.0] * 4)
    members = {"tails.learning": 100, "context.learning": 100, "resonance.learning": 100}
    ensemble = TailsContextResonance(members).update_many(values)
    normal = (1 - ExtremeTails({"learning": 100}).update_many(values)) * (
        1 - online_factory("context", {"learning": 100})().update_many(values)
    )
    normal *= 1 - AdaptiveResonance({"learning": 100}).update_many(values)
    np.testing.assert_allclose(ensemble, 1 - normal, rtol=0, atol=1e-12)


def test_a_source_of_the_ensemble_with_resonance_resumes_exactly() -> None:
    points = np.stack([_daily(1200), _daily(1200, seed=5)], axis=1)
    whole = SourceDetector(online_factory("ensemble_resonance"), 0.9999, 20)
    expected = whole.update_many(points)
    first = SourceDetector(online_factory("ensemble_resonance"), 0.9999, 20)
    head = first.update_many(points[:700])
    encoded = encode_state(first.get_state())
    assert len(encoded) <= MAX_STATE_BYTES
    second = SourceDetector(online_factory("ensemble_resonance"), 0.9999, 20)
    second.set_state(decode_state(encoded))
    assert head + second.update_many(points[700:]) == expected


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("resonance", {"vigilance": "2"}, "streaming.parameters.vigilance"),
        ("ensemble_resonance", {"resonance.rate": "0"}, "streaming.parameters.resonance.rate"),
    ],
)
def test_a_source_binds_the_resonance_kinds_with_parameters(
    kind: str, params: dict[str, str], field: str
) -> None:
    chosen = streaming_config(kind, dict.fromkeys(params, "0.5"), None, None)
    assert chosen.detector_name == f"streaming:{kind}"
    assert chosen.threshold == KINDS[kind].DEFAULT_THRESHOLD
    assert config_from_json(chosen.to_json()) == chosen
    with pytest.raises(InvalidArgument) as caught:
        streaming_config(kind, params, None, None)
    assert [v.field for v in caught.value.violations] == [field]
