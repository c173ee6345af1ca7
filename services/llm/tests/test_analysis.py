"""Sentiment with the real VADER analyzer."""

from __future__ import annotations

import time
from typing import Any

import pytest

from nexus.common.errors import REQUEST_TOO_LARGE, InvalidArgument, ResourceExhausted
from nexus.llm.analysis import CHUNK_CHARS, SentimentAnalyzer, chunks, label_of
from nexus.llm.settings import LlmSettings


@pytest.fixture
def analyzer() -> SentimentAnalyzer:
    """An analyzer with the default limits."""
    return SentimentAnalyzer(LlmSettings())


def test_clear_sentences_get_their_labels_in_order(analyzer: SentimentAnalyzer) -> None:
    results = analyzer.analyze(
        [
            "I love this product, it is absolutely wonderful!",
            "This is terrible. I hate it and want my money back.",
            "The meeting is on Tuesday at 3 pm in room 4.",
        ]
    )

    assert [r.label for r in results] == ["positive", "negative", "neutral"]
    positive, negative, neutral = results
    assert positive.compound > 0.5
    assert positive.positive > positive.negative
    assert negative.compound < -0.5
    assert negative.negative > negative.positive
    assert neutral.compound == 0.0
    assert neutral.neutral == 1.0
    for result in results:
        assert -1.0 <= result.compound <= 1.0
        assert result.positive + result.neutral + result.negative == pytest.approx(1.0, abs=0.01)


def test_labels_follow_vaders_thresholds() -> None:
    assert label_of(0.05) == "positive"
    assert label_of(0.0499) == "neutral"
    assert label_of(-0.0499) == "neutral"
    assert label_of(-0.05) == "negative"


def test_a_long_text_is_scored_in_pieces_in_linear_time(analyzer: SentimentAnalyzer) -> None:
    text = "The staff were friendly and the room was lovely. " * 2_000  # 100,000 characters

    started = time.perf_counter()
    [result] = analyzer.analyze([text])

    assert time.perf_counter() - started < 5.0  # VADER alone takes about 20 s on this text
    assert result.label == "positive"
    whole = analyzer.analyze(["The staff were friendly and the room was lovely."])[0]
    assert result.positive == pytest.approx(whole.positive, abs=0.02)


def test_pieces_keep_every_word_and_respect_the_size() -> None:
    text = ("A sentence ends here. " * 100) + ("x" * 2_500) + "\n\n" + ("word " * 500)

    pieces = list(chunks(text, CHUNK_CHARS))

    assert all(0 < len(piece) <= CHUNK_CHARS for piece in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "").replace("\n", "")
    assert list(chunks("short text", CHUNK_CHARS)) == ["short text"]


@pytest.mark.parametrize(
    ("texts", "field"),
    [([], "texts"), ("one string", "texts"), (["fine", ""], "texts[1]")],
)
def test_bad_texts_are_invalid(analyzer: SentimentAnalyzer, texts: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        analyzer.analyze(texts)

    assert caught.value.violations[0].field == field


def test_sizes_are_limited() -> None:
    analyzer = SentimentAnalyzer(
        LlmSettings(max_embed_inputs=2, max_input_chars=20, max_sentiment_chars=30)
    )

    for texts in (["a", "b", "c"], ["x" * 21], ["x" * 20, "y" * 11]):
        with pytest.raises(ResourceExhausted) as caught:
            analyzer.analyze(texts)
        assert caught.value.reason == REQUEST_TOO_LARGE
    assert len(analyzer.analyze(["x" * 20, "y" * 10])) == 2


def test_only_line_breaks_are_neutral(analyzer: SentimentAnalyzer) -> None:
    [result] = analyzer.analyze(["\n" * (CHUNK_CHARS + 1)])

    assert (result.label, result.compound) == ("neutral", 0.0)
