"""Text analysis without a provider: sentiment with VADER.

VADER (a lexicon and rules, tuned on social media) scores a text's positive, neutral and negative
shares and a normalised compound score in [-1, 1]; its documented thresholds label a text
positive at compound >= 0.05, negative at <= -0.05 and neutral in between.

VADER is made for sentences, and its cost grows with the square of a text's length (23 s for
100,000 characters). A text of up to `CHUNK_CHARS` is scored whole, as VADER does; a longer one is
split at sentence ends into pieces of at most `CHUNK_CHARS`, and the scores of the pieces are
averaged, weighted by their length, as VADER's authors suggest for paragraphs. The cost stays
linear, about 3 microseconds a character.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from nexus.common.errors import ResourceExhausted
from nexus.llm.embeddings import check_texts
from nexus.llm.settings import LlmSettings

POSITIVE_THRESHOLD = 0.05
"""Least compound score of a positive text (VADER's threshold)."""
NEGATIVE_THRESHOLD = -0.05
"""Greatest compound score of a negative text (VADER's threshold)."""
CHUNK_CHARS = 1_000
"""Longest piece of text VADER scores at once."""

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")


@dataclass(frozen=True)
class SentimentResult:
    """The sentiment of one text.

    Attributes:
        label: "positive", "negative" or "neutral".
        compound: Normalised overall score, -1 (most negative) to 1 (most positive).
        positive: Share of positive content, 0 to 1.
        neutral: Share of neutral content, 0 to 1.
        negative: Share of negative content, 0 to 1.
    """

    label: str
    compound: float
    positive: float
    neutral: float
    negative: float


def label_of(compound: float) -> str:
    """The label of a compound score, by VADER's thresholds."""
    if compound >= POSITIVE_THRESHOLD:
        return "positive"
    if compound <= NEGATIVE_THRESHOLD:
        return "negative"
    return "neutral"


class SentimentAnalyzer:
    """Scores the sentiment of texts with VADER (thread-safe, no I/O).

    Args:
        settings: The limits: 1 to `max_embed_inputs` texts of at most `max_input_chars`, at
            most `max_sentiment_chars` in all.
    """

    def __init__(self, settings: LlmSettings) -> None:
        self._settings = settings
        self._vader = SentimentIntensityAnalyzer()

    async def analyze_off_loop(self, texts: Sequence[str]) -> list[SentimentResult]:
        """`analyze` on a worker thread, so long texts do not stall the event loop."""
        return await asyncio.to_thread(self.analyze, list(texts))

    def analyze(self, texts: Sequence[str]) -> list[SentimentResult]:
        """The sentiment of each text, in order. CPU-bound (about 3 us a character): call it
        in an executor.

        Raises:
            InvalidArgument: No texts, or an empty one (`texts[i]`).
            ResourceExhausted: Too many texts, a text too long, or too many characters in all.
        """
        settings = self._settings
        checked = check_texts("texts", texts, settings, settings.max_embed_inputs)
        total = sum(len(text) for text in checked)
        if total > settings.max_sentiment_chars:
            raise ResourceExhausted.too_large(
                "texts (characters)", total, settings.max_sentiment_chars
            )
        return [self._score(text) for text in checked]

    def _score(self, text: str) -> SentimentResult:
        """VADER's scores of `text`, or the length-weighted mean of its pieces' scores."""
        sums = {"compound": 0.0, "pos": 0.0, "neu": 0.0, "neg": 0.0}
        weight = 0
        for piece in chunks(text, CHUNK_CHARS):
            scores = self._vader.polarity_scores(piece)
            for key in sums:
                sums[key] += len(piece) * float(scores[key])
            weight += len(piece)
        if not weight:  # only line breaks: VADER scores nothing, as for ""
            return SentimentResult("neutral", 0.0, 0.0, 0.0, 0.0)
        mean = {key: value / weight for key, value in sums.items()}
        compound = mean["compound"]
        return SentimentResult(label_of(compound), compound, mean["pos"], mean["neu"], mean["neg"])


def chunks(text: str, size: int) -> Iterator[str]:
    """`text` whole if it has at most `size` characters, else in pieces of at most `size`, cut
    after sentence ends (or, in a longer sentence, at a space) where possible."""
    if len(text) <= size:
        yield text
        return
    piece = ""
    for sentence in _SENTENCE_END.split(text):
        for part in _split_long(sentence, size):
            if piece and len(piece) + 1 + len(part) > size:
                yield piece
                piece = ""
            piece = f"{piece} {part}" if piece else part
    if piece:
        yield piece


def _split_long(sentence: str, size: int) -> Iterator[str]:
    """A sentence in parts of at most `size`, cut at the last space before the limit if any."""
    while len(sentence) > size:
        cut = sentence.rfind(" ", 0, size + 1)
        cut = cut if cut > 0 else size
        yield sentence[:cut]
        sentence = sentence[cut:].lstrip()
    if sentence:
        yield sentence
