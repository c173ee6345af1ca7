"""The streaming detectors' two compiled kinds as first written, in pure Python: the reference
that `ExtremeTails` and `ContextNovelty` must match value for value and state for state
(test_online_compiled.py). Each subclasses its kind for the parameters and replaces the rest."""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from collections.abc import Mapping

import numpy as np

from nexus.anomaly.detectors._types import FloatArray, Params
from nexus.anomaly.detectors.online import ContextNovelty, ExtremeTails, OnlineDetector, State
from nexus.anomaly.detectors.online._base import MAX_STATE_BYTES, Periods, Searches
from nexus.anomaly.detectors.online._periods import MIN_AUTOCORRELATION, PEAK_SHARE
from nexus.anomaly.detectors.online._tails import (
    _ABS_FLOOR,
    _REL_FLOOR,
    MIN_TAIL,
    PERIOD_TOLERANCE,
    PERIODS_BACK,
    RESIDUAL_PERIODS,
    SPREAD_SPAN,
)
from nexus.common.errors import InvalidArgument

_RELATIVE_WIDTH_FLOOR = 1e-9
_ABSOLUTE_WIDTH_FLOOR = 1e-12
_FAR = 2.0**30
_PAD = np.iinfo(np.int32).min
_MOVED, _STAYED = 1, 2
_PARTIAL = 0.5

Key = tuple[int, ...]


class _Tail:
    """The tail probability of a view against a sliding window of past views."""

    def __init__(self, size: int, learning: int, share: float) -> None:
        self.size, self.learning, self.share = size, learning, share
        self.window: deque[float] = deque()
        self.sorted: list[float] = []

    def probability(self, x: float) -> float:
        """Two-sided tail probability of `x` (1.0 while learning), then learns `x`."""
        p = self._probability(x) if len(self.sorted) >= self.learning else 1.0
        self.window.append(x)
        bisect.insort(self.sorted, x)
        if len(self.window) > self.size:
            del self.sorted[bisect.bisect_left(self.sorted, self.window.popleft())]
        return p

    def _probability(self, x: float) -> float:
        s = self.sorted
        n = len(s)
        k = max(MIN_TAIL, int(self.share * n))
        floor = max(_REL_FLOOR * (s[-1] - s[0]), _ABS_FLOOR * max(abs(s[-1]), abs(s[0])), 1e-300)
        upper, lower = s[n - k], s[k - 1]
        if x > upper:
            scale = max(sum(s[n - k :]) / k - upper, floor)
            fitted = (k / n) * math.exp(-(x - upper) / scale)
            p = max(fitted, (n - bisect.bisect_left(s, x)) / n)
        elif x < lower:
            scale = max(lower - sum(s[:k]) / k, floor)
            fitted = (k / n) * math.exp(-(lower - x) / scale)
            p = max(fitted, bisect.bisect_right(s, x) / n)
        else:
            p = min(n - bisect.bisect_left(s, x), bisect.bisect_right(s, x)) / n
        return min(1.0, 2.0 * p)

    def load(self, values: np.ndarray) -> None:
        self.window = deque(float(v) for v in values[-self.size :])
        self.sorted = sorted(self.window)


class ReferenceTails(ExtremeTails):
    """ExtremeTails as first written."""

    def __init__(self, params: Params | None = None, *, field: str = "params") -> None:
        super().__init__(params, field=field)
        self._size = int(self.params["window"])
        self._learning = int(self.params["learning"])
        self._share = float(self.params["tail_share"])
        self._fixed_period = int(self.params["period"])
        self._every = int(self.params["period_every"])
        self._value = self._tail()
        self._residual = self._tail()
        self._spread = self._tail()
        self._seen = 0
        self._period = self._fixed_period
        self._low = math.inf
        self._high = -math.inf

    def _tail(self) -> _Tail:
        return _Tail(self._size, self._learning, self._share)

    def update(self, value: float) -> float:
        history = self._value.window
        self._low, self._high = min(self._low, value), max(self._high, value)
        p = min(self._value.probability(value), self._spread.probability(self._log_spread()))
        views = 2
        if self._period and len(history) > self._period + 1:
            p = min(p, self._residual.probability(self._seasonal_residual(history, value)))
            views = 3
        p = min(1.0, views * p)  # the smallest of several probabilities, corrected (Bonferroni)
        self._seen += 1
        if (
            not self._fixed_period
            and self._seen >= self._learning
            and self._seen % self._every == 0
        ):
            self._find_period()
        return 0.0 if self._seen <= self._learning else 1.0 - p

    def _log_spread(self) -> float:
        """Log of the standard deviation of the last SPREAD_SPAN values (this one included)."""
        history = self._value.window
        recent = [history[-i] for i in range(1, min(SPREAD_SPAN, len(history)) + 1)]
        mean = sum(recent) / len(recent)
        deviation = math.sqrt(sum((v - mean) ** 2 for v in recent) / len(recent))
        return math.log(deviation + _REL_FLOOR * (self._high - self._low) + _ABS_FLOOR)

    def _seasonal_residual(self, history: deque[float], value: float) -> float:
        """`value` minus the median of its nearest matches one, two and three periods back, each
        the closest of the values a step either side of the period (a period is known to a step).
        """
        # `history` already holds `value` at [-1]; one period back is [-1 - period]
        back = []
        for k in range(1, PERIODS_BACK + 1):
            at = -1 - k * self._period
            if -at + 1 > len(history):
                break
            back.append(
                min((history[at - 1], history[at], history[at + 1]), key=lambda v: abs(v - value))
            )
        back.sort()
        return value - back[len(back) // 2]

    def _find_period(self) -> None:
        period = dominant_period(np.fromiter(self._value.window, float))
        if (
            period
            and self._period
            and abs(period - self._period) <= PERIOD_TOLERANCE * self._period
        ):
            return  # the same period, estimated a little differently
        if period != self._period:
            self._period = period
            self._residual = _Tail(
                self._size, max(self._learning, RESIDUAL_PERIODS * period), self._share
            )

    def update_many(self, values: FloatArray, periods: Periods | None = None) -> FloatArray:
        return OnlineDetector.update_many(self, values)  # it searches itself, one at a time

    def period_searches(self, values: FloatArray) -> Searches:
        return OnlineDetector.period_searches(self, values)

    def get_state(self) -> State:
        return {
            "values": np.fromiter(self._value.window, float),
            "residuals": np.fromiter(self._residual.window, float),
            "spreads": np.fromiter(self._spread.window, float),
            "scalars": np.array([self._seen, self._period, self._low, self._high], dtype=float),
        }

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        try:
            scalars = np.asarray(state["scalars"], dtype=float).ravel()
            seen, period, low, high = (float(v) for v in scalars)
            tails = [
                np.asarray(state[k], dtype=float).ravel()
                for k in ("values", "residuals", "spreads")
            ]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not an extreme-tails state: {err}") from None
        if any(len(t) > self._size or not np.all(np.isfinite(t)) for t in tails):
            raise ValueError("state windows larger than this detector's or not finite")
        for tail, values in zip((self._value, self._residual, self._spread), tails, strict=True):
            tail.load(values)
        self._seen, self._period = int(seen), int(period)
        self._low, self._high = low, high


class ReferenceContext(ContextNovelty):
    """ContextNovelty as first written."""

    def __init__(self, params: Params | None = None, *, field: str = "params") -> None:
        super().__init__(params, field=field)
        self._levels = int(self.params["levels"])
        self._order = int(self.params["order"])
        self._learning = int(self.params["learning"])
        self._capacity = int(self.params["max_contexts"])
        self._rate_weight = 1.0 / int(self.params["rate_memory"])
        largest = self._capacity * ((self._order + 2) * 4 + 8) + self._learning * 12
        if largest > MAX_STATE_BYTES:
            raise InvalidArgument.for_field(
                f"{field}.max_contexts",
                f"the state could reach {largest} bytes, over {MAX_STATE_BYTES}: max_contexts x"
                " ((order + 2) x 4 + 8) + learning x 12 must stay within it",
            )
        self._buffer: list[float] = []  # the learning period's values, until the range is set
        self._origin = 0.0
        self._width = 0.0
        self._runs: list[int] = []  # levels of the last `order` runs before the current one
        self._level = 0
        self._run = 0
        self._rate = 0.0  # recent rate of new events
        self._since_check = 0  # values since the range was last checked
        self._recent: deque[int] = deque(maxlen=self._learning)
        self._memory: OrderedDict[Key, int] = OrderedDict()

    # -- scoring and learning ----------------------------------------------------------------

    def update(self, value: float) -> float:
        if self._width == 0.0:
            self._buffer.append(value)
            if len(self._buffer) >= self._learning:
                self._start()
            return 0.0
        return self._step(value, score=True)

    def _start(self) -> None:
        low, high = min(self._buffer), max(self._buffer)
        floor = max(_RELATIVE_WIDTH_FLOOR * max(abs(low), abs(high)), _ABSOLUTE_WIDTH_FLOOR)
        self._width = max((high - low) / (self._levels - 1), floor)
        self._origin = low - self._width / 2  # the extremes mid-bin: a hair beyond is not new
        buffer, self._buffer = self._buffer, []
        for value in buffer:
            self._step(value, score=False)

    def _step(self, value: float, *, score: bool) -> float:
        level = self._quantise((value - self._origin) / self._width)
        if self._run and level == self._level:
            self._run = _STAYED
        else:
            if self._run:
                self._runs.append(self._level)
                if len(self._runs) > self._order:
                    del self._runs[0]
            self._level, self._run = level, _MOVED
        event = (level, self._run)
        likelihood = self._likelihood(self._novelty(event)) if score else 0.0
        self._learn(event)
        self._recent.append(level)
        self._since_check += 1
        if self._since_check >= self._learning:
            self._since_check = 0
            while self._bulk_span() >= 2 * self._levels:
                self._coarsen()
        return likelihood

    def _bulk_span(self) -> float:
        """Widths spanned by the middle 90% of the recent values (spikes aside)."""
        recent = sorted(self._recent)
        cut = len(recent) // 20
        return self._edge(recent[-1 - cut]) - self._edge(recent[cut])

    def _quantise(self, x: float) -> int:
        """The level of `x` widths from the origin: unit bins within `levels` of it, beyond
        that `levels / 2` bins per doubling of the distance (a heavy tail, a far spike: a few
        levels, not hundreds), mirrored below the origin."""
        if x >= 0.0:
            return self._outward(x)
        return -1 - self._outward(-x)

    def _outward(self, x: float) -> int:
        levels = self._levels
        if x < levels:
            return int(x)
        x = min(x, _FAR)  # inf too
        _, exponent = math.frexp(x / levels)  # x / levels in [2^(e-1), 2^e)
        octave = exponent - 1
        start = levels * 2.0**octave
        within = min(int((x - start) / 2.0 ** (octave + 1)), levels // 2 - 1)
        return levels + octave * (levels // 2) + within

    def _edge(self, level: int) -> float:
        """The lower edge of `level`'s bin nearest the origin, in widths (the inverse of
        `_quantise` up to the bin)."""
        if level < 0:
            return -self._edge(-1 - level)
        levels, half = self._levels, self._levels // 2
        if level < levels:
            return float(level)
        octave, within = divmod(level - levels, half)
        return levels * 2.0**octave + within * 2.0 ** (octave + 1)

    def _halve(self, level: int) -> int:
        """The level of the same values once the width doubles."""
        if level < 0:
            return -1 - self._halve(-1 - level)
        levels, half = self._levels, self._levels // 2
        if level < levels:
            return level // 2
        if level < levels + half:
            return level - levels + half
        return level - half

    def _likelihood(self, novelty: float) -> float:
        rate = self._rate
        self._rate += ((novelty >= 1.0) - rate) * self._rate_weight
        return novelty * (1.0 - rate)

    def _pairs(self, event: Key) -> list[Key]:
        runs = self._runs
        keys = [event]
        for k in range(1, len(runs) + 1):
            keys.append((*runs[-k:], *event))
        return keys

    def _novelty(self, event: Key) -> float:
        memory = self._memory
        known = 0
        count = 0
        for key in self._pairs(event):
            seen = memory.get(key, 0)
            if not seen:
                break
            known += 1
            count = seen
        orders = self._order + 1
        if known == orders:
            return 0.0
        if known == 0:
            return 1.0
        familiarity = known + 1.0 - 1.0 / (1 + count)
        return _PARTIAL * (1.0 - familiarity / orders)

    def _learn(self, event: Key) -> None:
        memory = self._memory
        for key in self._pairs(event):
            seen = memory.pop(key, 0)
            memory[key] = seen + 1
        while len(memory) > self._capacity:
            memory.popitem(last=False)

    def _coarsen(self) -> None:
        """Doubles the bin width, re-mapping every level (bin k of width w is bin k // 2)."""
        self._width *= 2.0
        halve = self._halve
        self._level = halve(self._level)
        self._runs = [halve(level) for level in self._runs]
        self._recent = deque((halve(level) for level in self._recent), maxlen=self._learning)
        merged: OrderedDict[Key, int] = OrderedDict()
        for key, count in self._memory.items():
            new = (*(halve(level) for level in key[:-1]), key[-1])
            merged[new] = merged.pop(new, 0) + count
        self._memory = merged

    def update_many(self, values: FloatArray, periods: Periods | None = None) -> FloatArray:
        return OnlineDetector.update_many(self, values)

    # -- state -------------------------------------------------------------------------------

    def get_state(self) -> State:
        width = self._order + 2  # the longest pair: `order` run levels, the level, its run bucket
        keys = np.full((len(self._memory), width), _PAD, dtype=np.int32)
        for row, key in enumerate(self._memory):
            keys[row, : len(key)] = key
        return {
            "buffer": np.asarray(self._buffer, dtype=np.float64),
            "scale": np.asarray([self._origin, self._width, self._rate], dtype=np.float64),
            "runs": np.asarray(self._runs, dtype=np.int64),
            "current": np.asarray([self._level, self._run, self._since_check], dtype=np.int64),
            "recent": np.asarray(self._recent, dtype=np.int32),
            "keys": keys,
            "counts": np.asarray(list(self._memory.values()), dtype=np.int64),
        }

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        try:
            buffer = [float(v) for v in np.asarray(state["buffer"], dtype=np.float64).ravel()]
            origin, width, rate = (float(v) for v in np.asarray(state["scale"], dtype=np.float64))
            runs = [int(v) for v in np.asarray(state["runs"], dtype=np.int64).ravel()]
            level, run, since = (int(v) for v in np.asarray(state["current"], dtype=np.int64))
            recent = [int(v) for v in np.asarray(state["recent"], dtype=np.int64).ravel()]
            keys = np.asarray(state["keys"], dtype=np.int64)
            counts = [int(v) for v in np.asarray(state["counts"], dtype=np.int64).ravel()]
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"not a context detector's state: {err}") from None
        if (
            len(buffer) >= self._learning
            or (width == 0.0 and bool(runs or recent or counts or run))
            or not 0 <= since < self._learning
            or not (math.isfinite(origin) and math.isfinite(width) and width >= 0.0)
            or not 0.0 <= rate <= 1.0
            or run not in (0, _MOVED, _STAYED)
            or len(runs) > self._order
            or len(recent) > self._learning
            or (width > 0.0 and bool(buffer))
            or keys.ndim != 2
            or keys.shape != (len(counts), self._order + 2)
            or len(counts) > self._capacity
            or min(counts, default=1) < 1
        ):
            raise ValueError("state does not fit this detector's parameters")
        memory: OrderedDict[Key, int] = OrderedDict()
        for row, count in zip(keys.tolist(), counts, strict=True):
            memory[tuple(v for v in row if v != _PAD)] = count
        self._buffer, self._origin, self._width, self._rate = buffer, origin, width, rate
        self._runs, self._level, self._run, self._since_check = runs, level, run, since
        self._recent = deque(recent, maxlen=self._learning)
        self._memory = memory


def dominant_period(values: np.ndarray) -> int:
    """The period search as first written, one window at a time (the service makes a batch's
    searches together: `_periods.dominant_periods`)."""
    x = values - values.mean()
    n = len(x)
    energy = float(x @ x)
    if n < 8 or energy <= 0.0:
        return 0
    spectrum = np.fft.rfft(x, 2 * n)
    lags = np.arange(n // 3)
    # per overlapping pair, so that the falling overlap does not pull peaks to shorter lags
    autocorrelation = (
        np.fft.irfft(spectrum * np.conj(spectrum))[: n // 3] * n / ((n - lags) * energy)
    )
    negative = np.flatnonzero(autocorrelation < 0)
    if not len(negative) or negative[0] >= len(autocorrelation) - 1:
        return 0
    start = max(2, int(negative[0]))
    tail = autocorrelation[start:]
    if tail.max() < MIN_AUTOCORRELATION:
        return 0
    # the shortest lag that is a local peak nearly as high as the highest: a period, not a multiple
    near = np.flatnonzero(tail >= PEAK_SHARE * tail.max())
    lag = start + int(near[0])
    while lag + 1 < len(autocorrelation) and autocorrelation[lag + 1] > autocorrelation[lag]:
        lag += 1
    return lag
