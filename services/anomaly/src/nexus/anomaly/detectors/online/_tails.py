"""Extreme-value tails: how improbable a value is given a window of recent history.

Three views of each value are judged, each against its own sliding window of the last `window`
views: the value itself (spikes, drops, level shifts), its seasonal residual, the value minus
the median of the values one, two and three periods ago (a broken daily pattern whose values
are all ordinary on their own), and the log of its local spread over the last 12 values (a
stretch gone flat, or suddenly volatile). The period is found online, from the window's
autocorrelation, and re-checked every `period_every` values; a series without a clear one is
judged on the other two views.

A view's two-sided tail probability beyond the window's `tail_share` most extreme views on
either side comes from an exponential fit to their excesses (peaks over threshold: the
generalised Pareto tail with shape 0, as in Siffer et al., "Anomaly detection in streams with
extreme value theory", KDD 2017), never below the share of the window at least as extreme (so
a spike that recurs daily is not news); within the body, the empirical share. The likelihood is
1 - the smallest of the views' probabilities times their number (Bonferroni's correction: the
chance that any of them is this extreme by chance). Nothing is flagged during the learning
period.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping

import numpy as np

from nexus.anomaly.detectors._params import ParamSpec, integer, number
from nexus.anomaly.detectors._types import Params
from nexus.anomaly.detectors.online._base import OnlineDetector, State

SPREAD_SPAN = 12
"""Values over which the local spread is measured."""
PERIODS_BACK = 3
RESIDUAL_PERIODS = 2
"""Periods the seasonal reference looks back (the median of their values)."""
MIN_TAIL = 10
"""The fewest extreme views a tail is fitted on."""
MIN_AUTOCORRELATION = 0.5
"""A period is accepted when the autocorrelation at its lag reaches this."""
PERIOD_TOLERANCE = 0.02
"""A period found within this share of the current one is the same period (kept, not relearnt)."""
PEAK_SHARE = 0.9
"""Peaks within this share of the highest compete, and the shortest lag wins (not a multiple)."""
_REL_FLOOR = 1e-3  # of the window's span: the smallest excess scale and spread considered
_ABS_FLOOR = 1e-12


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


class ExtremeTails(OnlineDetector):
    """See the module docstring."""

    KIND = "tails"
    DEFAULT_THRESHOLD = 0.999
    DESCRIPTION = (
        "Extreme-value tail probability of the value, its seasonal residual and its local spread"
    )
    PARAMS = (
        ParamSpec("window", 2000, integer(50, 20_000), "Recent values each view is judged on"),
        ParamSpec("learning", 150, integer(10, 20_000), "Values seen before anything is scored"),
        ParamSpec(
            "tail_share", 0.02, number(0.0, 0.5, open_below=True), "Share of a window in a tail"
        ),
        ParamSpec("period", 0, integer(0, 10_000), "Seasonal period in values (0: find it)"),
        ParamSpec("period_every", 100, integer(1, 100_000), "Values between period searches"),
    )

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


def dominant_period(values: np.ndarray) -> int:
    """The lag of the autocorrelation's first near-highest peak after it first turns negative,
    if it reaches MIN_AUTOCORRELATION; else 0 (no clear period)."""
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
