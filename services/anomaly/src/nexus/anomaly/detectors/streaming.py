"""Online detection for metric points that arrive one at a time, with no training step.

Each feature keeps an exponentially weighted mean and variance (the incremental form of West,
1979). A point's score is its largest absolute z-score against the statistics *before* it, so a
spike cannot hide itself. During the warm-up the weight is 1/n, which makes the statistics the
exact mean and variance of the points so far; after it the weight is `alpha`, so the statistics
follow slow drift. Anomalous points are clipped to `threshold` deviations before they update the
statistics: a spike barely moves them, while a lasting level shift is absorbed within a few
points (each clipped update widens the variance), so the detector does not alarm forever.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nexus.anomaly.detectors._types import FloatArray
from nexus.anomaly.detectors._validation import validate_point
from nexus.common.errors import InvalidArgument, NotFound

WidthChange = Literal["reset", "error"]
"""What a point of another width does: start over with it, or be refused."""

DEFAULT_ALPHA = 0.05
DEFAULT_THRESHOLD = 4.0
DEFAULT_WARMUP = 30
DEFAULT_MAX_SOURCES = 10_000

# A series that has been constant has no variance; this floor keeps its z-scores finite.
_REL_STD_FLOOR = 1e-6
_ABS_STD_FLOOR = 1e-9
# Points are learnt within this magnitude, so that squared deviations, and with them the
# statistics, stay finite for values anywhere in the float range (they still score as they are).
_LEARN_LIMIT = 1e150
_MAX_SCORE = float(np.finfo(np.float64).max)


@dataclass(frozen=True)
class StreamingScore:
    """The verdict on one point.

    Attributes:
        score: The largest |z| over the point's features, against the statistics before it.
        is_anomaly: The score is above the threshold and the detector was warmed up.
        threshold: The threshold in effect.
        warmed_up: The detector had seen `warmup` points before this one.
        feature: The index of the feature with the largest |z| (-1 for a stream's first point).
    """

    score: float
    is_anomaly: bool
    threshold: float
    warmed_up: bool
    feature: int = -1


class StreamingDetector:
    """Exponentially weighted z-score detector for one source's stream of points.

    Args:
        alpha: Weight of a new point after the warm-up, in (0, 1); larger forgets faster.
        threshold: A point whose largest |z| exceeds this is an anomaly (> 0).
        warmup: Points seen before any point can be an anomaly (>= 2).
        on_width_change: A point whose width differs from the stream's: "reset" drops the
            statistics and starts a new warm-up with it (a source that gained a metric keeps
            flowing); "error" raises InvalidArgument and keeps the statistics.

    Raises:
        InvalidArgument: A setting out of its range.
    """

    def __init__(
        self,
        *,
        alpha: float = DEFAULT_ALPHA,
        threshold: float = DEFAULT_THRESHOLD,
        warmup: int = DEFAULT_WARMUP,
        on_width_change: WidthChange = "reset",
    ) -> None:
        _check_settings(alpha, threshold, warmup, on_width_change)
        self.alpha = float(alpha)
        self.threshold = float(threshold)
        self.warmup = int(warmup)
        self.on_width_change = on_width_change
        self.reset()

    @property
    def n_features(self) -> int | None:
        """The stream's width, or None before its first point."""
        return int(self._mean.shape[0]) if self.n_seen else None

    @property
    def warmed_up(self) -> bool:
        """Whether the next point can be flagged."""
        return self.n_seen >= self.warmup

    def reset(self) -> None:
        """Forgets the stream: the next point starts a new warm-up (and may set a new width)."""
        self.n_seen = 0
        self._mean: FloatArray = np.zeros(0)
        self._var: FloatArray = np.zeros(0)

    def update(self, x: Sequence[float] | FloatArray, *, field: str = "values") -> StreamingScore:
        """Scores point `x` against the stream so far, then learns from it.

        Raises:
            InvalidArgument: `x` is empty or holds NaN/inf, or has another width under
                on_width_change="error".
        """
        point = self._accepted(x, field)
        score, feature = self._score(point)
        warmed_up = self.warmed_up
        is_anomaly = warmed_up and score > self.threshold
        self._learn(self._clipped(point) if is_anomaly else point)
        return StreamingScore(score, is_anomaly, self.threshold, warmed_up, feature)

    def _accepted(self, x: Sequence[float] | FloatArray, field: str) -> FloatArray:
        point = validate_point(x, field=field)
        width = self.n_features
        if width is not None and point.shape[0] != width:
            if self.on_width_change == "error":
                raise InvalidArgument.for_field(
                    field, f"has {point.shape[0]} values; this stream's points have {width}"
                )
            self.reset()
        return point

    def _score(self, point: FloatArray) -> tuple[float, int]:
        if not self.n_seen:
            return 0.0, -1
        z = np.abs(point - self._mean) / self._std()
        feature = int(np.argmax(z))
        return min(float(z[feature]), _MAX_SCORE), feature

    def _learn(self, point: FloatArray) -> None:
        point = np.clip(point, -_LEARN_LIMIT, _LEARN_LIMIT)
        self.n_seen += 1
        if self.n_seen == 1:
            self._mean, self._var = point.copy(), np.zeros_like(point)
            return
        weight = max(self.alpha, 1.0 / self.n_seen)
        diff = point - self._mean
        self._mean = self._mean + weight * diff
        self._var = (1.0 - weight) * (self._var + weight * diff * diff)

    def _clipped(self, point: FloatArray) -> FloatArray:
        """`point` pulled back to `threshold` deviations from the mean, feature by feature."""
        bound = self.threshold * self._std()
        return self._mean + np.clip(point - self._mean, -bound, bound)

    def _std(self) -> FloatArray:
        floor = _REL_STD_FLOOR * np.abs(self._mean) + _ABS_STD_FLOOR
        return np.maximum(np.sqrt(self._var), floor)


class StreamingDetectors:
    """One `StreamingDetector` per source, created on a source's first point.

    Holds at most `max_sources`; past that, the source updated least recently is forgotten
    (its next point starts a new warm-up), so a flood of source names cannot exhaust memory.

    Args:
        max_sources: Most sources tracked at once (>= 1).
        **settings: `StreamingDetector` settings for every source (alpha, threshold, warmup).
    """

    def __init__(self, *, max_sources: int = DEFAULT_MAX_SOURCES, **settings: Any) -> None:
        if max_sources < 1:
            raise InvalidArgument.for_field("max_sources", f"must be >= 1, got {max_sources}")
        StreamingDetector(**settings)  # fail now, not on the first point
        self.max_sources = max_sources
        self._settings = settings
        self._detectors: OrderedDict[str, StreamingDetector] = OrderedDict()

    def update(self, source: str, x: Sequence[float] | FloatArray) -> StreamingScore:
        """Scores `x` on `source`'s stream (see `StreamingDetector.update`)."""
        detector = self._detectors.get(source)
        if detector is None:
            detector = self._detectors[source] = StreamingDetector(**self._settings)
            if len(self._detectors) > self.max_sources:
                self._detectors.popitem(last=False)
        self._detectors.move_to_end(source)
        return detector.update(x)

    def get(self, source: str) -> StreamingDetector:
        """The detector of `source`.

        Raises:
            NotFound: No point of `source` has been seen (or it was forgotten).
        """
        if source not in self._detectors:
            raise NotFound(f"no streaming state for source {source!r}")
        return self._detectors[source]

    def remove(self, source: str) -> None:
        """Forgets `source`.

        Raises:
            NotFound: The source is not tracked.
        """
        self.get(source)
        del self._detectors[source]

    def sources(self) -> list[str]:
        """The tracked sources, least recently updated first."""
        return list(self._detectors)

    def __len__(self) -> int:
        return len(self._detectors)


def _check_settings(alpha: float, threshold: float, warmup: int, on_width_change: str) -> None:
    if not 0.0 < alpha < 1.0:
        raise InvalidArgument.for_field("alpha", f"must be in (0, 1), got {alpha}")
    if not (math.isfinite(threshold) and threshold > 0.0):
        raise InvalidArgument.for_field("threshold", f"must be a number > 0, got {threshold}")
    if isinstance(warmup, bool) or int(warmup) != warmup or warmup < 2:
        raise InvalidArgument.for_field("warmup", f"must be an integer >= 2, got {warmup}")
    if on_width_change not in ("reset", "error"):
        raise InvalidArgument.for_field(
            "on_width_change", f"must be 'reset' or 'error', got {on_width_change!r}"
        )
