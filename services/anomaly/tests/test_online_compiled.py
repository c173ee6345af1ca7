"""The compiled streaming detectors against their pure-Python reference (online_reference.py):
the same likelihoods, value for value, whatever the series and however it is cut into calls,
the same saved states, and states that either one saved resumed by the other."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from online_reference import ReferenceContext, ReferenceTails, dominant_period

from nexus.anomaly.detectors.online import (
    ContextNovelty,
    ExtremeTails,
    OnlineDetector,
    SourceDetector,
    TailsAndContext,
)
from nexus.anomaly.detectors.online._periods import dominant_periods

N = 5000


def _series() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    t = np.arange(N)
    return {
        "gaussian": rng.normal(size=N),
        "seasonal": 50 + 20 * np.sin(2 * np.pi * t / 96) + rng.normal(size=N),
        "trend": 0.01 * t + rng.normal(size=N),
        "spikes": np.where(rng.random(N) < 0.01, 40.0, 0.0) + 0.1 * rng.normal(size=N),
        "steps": 1000.0 * np.repeat(rng.integers(0, 5, N // 100), 100),
        "flat then wide": np.concatenate([np.ones(N // 2), 1e6 * rng.standard_cauchy(N // 2)]),
        "integers": rng.poisson(3, size=N).astype(float),
    }


SERIES = _series()
KINDS: list[tuple[type[OnlineDetector], type[OnlineDetector], dict[str, str]]] = [
    (ExtremeTails, ReferenceTails, {}),
    (ExtremeTails, ReferenceTails, {"window": "300", "learning": "40", "period_every": "7"}),
    (ExtremeTails, ReferenceTails, {"period": "96"}),
    (ContextNovelty, ReferenceContext, {}),
    (ContextNovelty, ReferenceContext, {"max_contexts": "16", "order": "5", "levels": "2"}),
    (ContextNovelty, ReferenceContext, {"learning": "10", "rate_memory": "1", "levels": "64"}),
]
IDS = [f"{compiled.KIND}{params}" for compiled, _, params in KINDS]


def _reference(make: Callable[[], OnlineDetector], values: np.ndarray) -> np.ndarray:
    detector = make()
    return np.array([detector.update(v) for v in values.tolist()])


@pytest.mark.parametrize(("compiled", "reference", "params"), KINDS, ids=IDS)
def test_the_same_likelihoods_and_states_as_the_reference(
    compiled: type[OnlineDetector], reference: type[OnlineDetector], params: dict[str, str]
) -> None:
    for name, values in SERIES.items():
        expected_detector = reference(params)
        expected = np.array([expected_detector.update(v) for v in values.tolist()])
        detector = compiled(params)
        cuts = [0, 1, 2, 150, 151, 777, 2500, N]  # calls of every size, learning periods cut
        got = np.concatenate(
            [detector.update_many(values[a:b]) for a, b in itertools.pairwise(cuts)]
        )
        np.testing.assert_array_equal(got, expected, err_msg=name)
        state, expected_state = detector.get_state(), expected_detector.get_state()
        assert state.keys() == expected_state.keys()
        for key, array in state.items():
            np.testing.assert_array_equal(array, expected_state[key], err_msg=f"{name}: {key}")
            assert array.dtype == expected_state[key].dtype, f"{name}: {key}"


@pytest.mark.parametrize(("compiled", "reference", "params"), KINDS, ids=IDS)
def test_a_state_resumes_exactly_whichever_saved_it(
    compiled: type[OnlineDetector], reference: type[OnlineDetector], params: dict[str, str]
) -> None:
    values = SERIES["seasonal"] + SERIES["spikes"]
    expected = _reference(lambda: reference(params), values)
    for stop in (5, 200, 1234, 4000):
        first = compiled(params)
        head = first.update_many(values[:stop])
        resumed = compiled(params)
        resumed.set_state(first.get_state())
        np.testing.assert_array_equal(
            np.concatenate([head, resumed.update_many(values[stop:])]), expected
        )
        old = reference(params)  # a state saved before the detectors were compiled
        old_head = [old.update(v) for v in values[:stop].tolist()]
        from_old = compiled(params)
        from_old.set_state(old.get_state())
        np.testing.assert_array_equal(
            np.concatenate([old_head, from_old.update_many(values[stop:])]), expected
        )
        back = reference(params)  # and a compiled one's state read by the reference
        back.set_state(resumed.get_state())
        assert back.update(1e3) == resumed.update(1e3)


def _reference_ensemble(state_budget: int | None = None) -> OnlineDetector:
    """The ensemble of the references, its context memory as large as the compiled one's
    share of `state_budget`."""
    ensemble = TailsAndContext(state_budget=state_budget)
    capacity = ensemble._members[1]._capacity  # type: ignore[attr-defined]
    ensemble._members = [ReferenceTails(), ReferenceContext({"max_contexts": capacity})]
    return ensemble


def test_a_source_detector_gives_the_verdicts_of_points_one_at_a_time() -> None:
    rng = np.random.default_rng(3)
    rows = np.column_stack([SERIES["seasonal"], SERIES["spikes"], SERIES["steps"]])
    points = rows.tolist()[:3000] + rng.normal(size=(500, 2)).tolist()  # a width change
    one_at_a_time = SourceDetector(_reference_ensemble, 0.99, 5)
    expected = [one_at_a_time.update(point) for point in points]
    assert sum(v.is_anomaly for v in expected) > 10
    batched = SourceDetector(TailsAndContext, 0.99, 5)
    got = []
    for start in range(0, len(points), 1024):
        got += batched.update_many(points[start : start + 1024])
    assert got == expected


def test_period_searches_made_together_find_what_each_alone_finds() -> None:
    rng = np.random.default_rng(11)
    windows = [
        SERIES[name][start : start + length]
        for name in SERIES
        for start, length in ((0, 2000), (1000, 2000), (17, 300), (0, 7), (5, 9), (3, 2000))
    ] + [np.full(100, 2.0), rng.normal(size=2000), 1e150 * rng.normal(size=2000)]
    t = np.arange(2000)
    windows += [
        np.sin(2 * np.pi * t[:n] / p) + 0.1 * rng.normal(size=n)
        for p in (24, 150)
        for n in (2000, 500)
    ]
    found = dominant_periods(windows)
    assert found.tolist() == [dominant_period(window) for window in windows]
    assert len(set(found.tolist())) > 3  # several periods found, in windows of several lengths
