"""A trained detector as the model runtime serves it: loaded from its signed pickle, scoring
concurrent requests as one matrix."""

from __future__ import annotations

import numpy as np

from nexus.anomaly.detectors import AnomalyModel, BoolArray, FeatureContribution, FloatArray
from nexus.common.errors import InvalidArgument
from nexus.common.runtime import Batching, Model, ModelSource

FRAMEWORK = "nexus-anomaly"
"""The registry framework of the detectors the service trains."""

Verdicts = tuple[FloatArray, BoolArray]
"""Scores of some rows, and whether each is an anomaly."""


class ServedDetector(Model[np.ndarray, Verdicts]):
    """One registered detector version.

    Args:
        source: The registry version to load.
        batching: How concurrent requests (ScorePoints calls, streamed points) are merged.
    """

    def __init__(self, source: ModelSource, batching: Batching) -> None:
        super().__init__(source)
        self.batching = batching
        self._model: AnomalyModel | None = None

    async def load(self) -> None:
        """Fetches, verifies and unpickles the version (on the executor).

        Raises:
            InvalidArgument: The artifact is not an anomaly detector.
        """
        model = await self.source.signed_object()
        if not isinstance(model, AnomalyModel):
            raise InvalidArgument(
                f"model {self.source.name} version {self.source.version} is not an anomaly detector"
            )
        self._model = model

    @property
    def detector(self) -> AnomalyModel:
        """The trained detector (after `load`)."""
        assert self._model is not None, "load() first"
        return self._model

    def predict(self, inputs: np.ndarray) -> Verdicts:
        """Scores the rows of one request."""
        return self.detector.score(inputs)

    def predict_batch(self, batch: list[np.ndarray]) -> list[Verdicts]:
        """Scores the rows of many requests as one matrix, then hands each its own rows."""
        if len(batch) == 1:
            return [self.predict(batch[0])]
        scores, flags = self.detector.score(np.vstack(batch))
        bounds = np.cumsum([len(rows) for rows in batch])[:-1]
        return list(zip(np.split(scores, bounds), np.split(flags, bounds), strict=True))

    def explain(self, point: np.ndarray) -> list[FeatureContribution]:
        """What drove the score of one point (blocking)."""
        return self.detector.explain(point)

    def count(self, inputs: np.ndarray) -> int:
        """One prediction per row."""
        return len(inputs)
