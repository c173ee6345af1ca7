"""Streaming (online) detectors on generated series: one section per kind."""

from __future__ import annotations

import numpy as np
import pytest

from nexus.anomaly.detectors.online import (
    KINDS,
    MAX_STATE_BYTES,
    ContextNovelty,
    decode_state,
    encode_state,
    online_factory,
)
from nexus.common.errors import InvalidArgument

DAY = 288  # five-minute steps


def _daily(n: int = 4000, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + 20 * np.sin(2 * np.pi * t / DAY) + rng.uniform(-noise, noise, n)


# -- context ---------------------------------------------------------------------------------


def _context(values: np.ndarray, **params: int) -> np.ndarray:
    detector = ContextNovelty(params)
    return np.array([detector.update(v) for v in values.tolist()])


def test_context_is_registered_and_built_by_the_factory() -> None:
    assert KINDS["context"] is ContextNovelty
    assert isinstance(online_factory("context", {"levels": "12"})(), ContextNovelty)


def test_context_likelihoods_lie_in_0_1_and_are_0_while_learning() -> None:
    values = np.random.default_rng(1).lognormal(size=3000)
    out = _context(values, learning=200)
    assert np.all((out >= 0) & (out <= 1))
    assert not out[:200].any()
    assert out[200:].any()


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_context_a_clean_daily_series_raises_nothing_after_learning(noise: float) -> None:
    out = _context(_daily(noise=noise))
    assert out[DAY:].max() < 0.99


@pytest.mark.parametrize("anomaly", ["spike", "level_shift"])
def test_context_a_new_value_in_a_daily_series_is_flagged(anomaly: str) -> None:
    values = _daily(noise=0.5)
    at = 3000
    if anomaly == "spike":
        values[at] += 60
    else:
        values[at:] += 45
    out = _context(values)
    assert out[at : at + 5].max() >= 0.99
    assert out[DAY:at].max() < 0.99


def test_context_a_known_value_out_of_its_context_stands_out_below_a_flag() -> None:
    values = _daily()
    at = 10 * DAY + DAY // 4  # the daily low, at the daily high: known levels, a new transition
    values[at : at + 3] = 31
    out = _context(values)
    assert 0.0 < out[at : at + 4].max() < 0.99
    assert not out[3 * DAY : at].any()


def test_context_a_learnt_level_shift_falls_back() -> None:
    values = _daily(n=8000, noise=0.5)
    values[3000:] += 45
    out = _context(values)
    assert out[3000:3005].max() >= 0.99
    assert out[3000 + 2 * DAY :].max() < 0.99


def test_context_resumes_exactly_from_its_encoded_state() -> None:
    rng = np.random.default_rng(2)
    values = np.concatenate(
        [_daily(2000, noise=1.0), rng.lognormal(4, 1, 1500), 300 + rng.normal(0, 40, 1500)]
    )
    whole = _context(values, learning=100, max_contexts=200)
    for stop in (50, 2500):  # while learning, and after coarsening and evictions
        first = ContextNovelty({"learning": 100, "max_contexts": 200})
        head = [first.update(v) for v in values[:stop].tolist()]
        second = ContextNovelty({"learning": 100, "max_contexts": 200})
        second.set_state(decode_state(encode_state(first.get_state())))
        tail = [second.update(v) for v in values[stop:].tolist()]
        assert np.array_equal(np.array(head + tail), whole)


def test_context_state_stays_bounded_on_a_long_random_stream() -> None:
    detector = ContextNovelty({"order": 16, "max_contexts": 12_000})
    for value in np.random.default_rng(3).standard_cauchy(60_000).tolist():
        detector.update(value)
    state = detector.get_state()
    assert len(state["counts"]) == 12_000
    assert len(encode_state(state)) <= MAX_STATE_BYTES


def test_context_coarsens_when_the_range_grows() -> None:
    values = np.concatenate([np.linspace(0, 1, 300), np.linspace(1, 100, 3000)])
    detector = ContextNovelty()
    for value in values.tolist():
        detector.update(value)
    assert float(detector.get_state()["scale"][1]) > 1.0 / 10


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"levels": 7}, "params.levels"),
        ({"levels": 1}, "params.levels"),
        ({"order": 0}, "params.order"),
        ({"learning": "soon"}, "params.learning"),
        ({"max_contexts": 200_000, "order": 16}, "params.max_contexts"),
        ({"rate_memory": 0}, "params.rate_memory"),
        ({"window": 10}, "params.window"),
    ],
)
def test_context_rejects_bad_parameters(params: dict[str, int | str], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        ContextNovelty(params)
    assert field in str(err.value)


def test_context_refuses_a_state_of_other_parameters() -> None:
    detector = ContextNovelty({"learning": 50})
    for value in _daily(500).tolist():
        detector.update(value)
    with pytest.raises(ValueError, match="does not fit"):
        ContextNovelty({"learning": 50, "order": 2}).set_state(detector.get_state())
    with pytest.raises(ValueError, match="not a context detector's state"):
        ContextNovelty().set_state({"buffer": np.zeros(3)})
