"""NAB's scoring, on series small enough to score by hand."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest

from nexus.anomaly.detectors.online import OnlineDetector, SourceDetector, State
from nexus.anomaly.evaluation import PROFILES, LabelledSeries, ScoredCorpus, suppressed_flags

STANDARD, LOW_FP, LOW_FN = PROFILES


def _s(x: float) -> float:
    return 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def _series(n: int = 100, windows: tuple[tuple[int, int], ...] = ((50, 59),)) -> LabelledSeries:
    return LabelledSeries("s.csv", np.zeros(n), windows)


def _flags(n: int, *rows: int) -> np.ndarray:
    flags = np.zeros(n, dtype=bool)
    flags[list(rows)] = True
    return flags


def test_a_detection_at_a_windows_start_is_worth_the_whole_true_positive() -> None:
    corpus = ScoredCorpus([_series()])
    result = corpus.score_flags([_flags(100, 50)], STANDARD, 0.5)
    assert result.raw == pytest.approx(1.0)
    assert result.score == pytest.approx(100.0)  # null -1, perfect +1
    assert (result.true_positives, result.false_positives, result.missed) == (1, 0, 0)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    corpus = ScoredCorpus([_series()])
    late = corpus.score_flags([_flags(100, 59)], STANDARD, 0.5).raw
    both = corpus.score_flags([_flags(100, 55, 59)], STANDARD, 0.5).raw
    assert late == pytest.approx(_s(-0.1) / _s(-1.0))
    assert both == pytest.approx(_s(-0.5) / _s(-1.0))


def test_false_positives_cost_less_soon_after_a_window_and_fully_before_any() -> None:
    corpus = ScoredCorpus([_series()])
    before = corpus.score_flags([_flags(100, 20)], STANDARD, 0.5).raw
    after = corpus.score_flags([_flags(100, 60)], LOW_FP, 0.5).raw
    assert before == pytest.approx(-1.0 - 0.11)  # the missed window and a full false positive
    assert after == pytest.approx(-1.0 + 0.22 * _s(1 / 9))


def test_the_probationary_period_is_not_scored() -> None:
    corpus = ScoredCorpus([_series()])  # 15% of 100 rows: rows 0..14
    assert corpus.score_flags([_flags(100, 3, 14)], STANDARD, 0.5).raw == pytest.approx(-1.0)
    assert corpus.score_flags([_flags(100, 15)], STANDARD, 0.5).false_positives == 1


def test_a_miss_costs_the_profiles_false_negative_weight() -> None:
    corpus = ScoredCorpus([_series(), _series(windows=())])
    nothing = [np.zeros(100, dtype=bool)] * 2
    assert corpus.score_flags(nothing, LOW_FN, 0.5).raw == pytest.approx(-2.0)
    assert corpus.score_flags(nothing, LOW_FN, 0.5).score == pytest.approx(0.0)


def test_the_threshold_is_the_one_that_scores_best_over_every_series() -> None:
    scores = np.full(100, 0.1)
    scores[50] = 0.9  # the window's start
    scores[[20, 30]] = 0.95  # two false positives, scored higher
    corpus = ScoredCorpus([_series()])
    result = corpus.score([scores], STANDARD)
    assert result.threshold == pytest.approx(0.9)
    assert result.raw == pytest.approx(1.0 - 2 * 0.11)
    assert corpus.score([scores], LOW_FP).raw == pytest.approx(1.0 - 2 * 0.22)


def test_scores_of_another_length_are_refused() -> None:
    with pytest.raises(ValueError, match="scores for 100 rows"):
        ScoredCorpus([_series()]).score([np.zeros(99)], STANDARD)


def test_a_flag_silences_the_next_rows() -> None:
    likelihood = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    assert suppressed_flags(likelihood, 0.5, 2).tolist() == [0, 1, 0, 0, 0, 1, 0]
    assert suppressed_flags(likelihood, 0.5, 0).tolist() == [0, 1, 1, 1, 0, 1, 1]


class _Scripted(OnlineDetector):
    """Replays given likelihoods: to see how a source flags them."""

    KIND = "scripted"
    DESCRIPTION = "replays likelihoods"

    def __init__(self, likelihoods: list[float]) -> None:
        super().__init__()
        self._next = iter(likelihoods)

    def update(self, value: float) -> float:
        return next(self._next)

    def state_bound(self) -> int:
        return 0

    def get_state(self) -> State:
        return {}

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        return None


@pytest.mark.parametrize("suppress", [0, 1, 3, 10])
def test_the_bench_suppresses_flags_as_a_source_does(suppress: int) -> None:
    likelihood = np.random.default_rng(suppress).random(500)
    source = SourceDetector(lambda **_: _Scripted(likelihood.tolist()), 0.8, suppress)
    flagged = [source.update([0.0]).is_anomaly for _ in likelihood]
    assert suppressed_flags(likelihood, 0.8, suppress).tolist() == flagged
