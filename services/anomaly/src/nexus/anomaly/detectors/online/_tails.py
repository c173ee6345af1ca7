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

The windows are numpy arrays (each a ring of its views in arrival order, and the same views
sorted), stepped through by a compiled loop (`_run`) that gives the same likelihoods as the
straightforward Python it replaced (tests/test_online_compiled.py holds that reference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from nexus.anomaly.detectors._params import ParamSpec, integer, number
from nexus.anomaly.detectors._types import FloatArray, Params
from nexus.anomaly.detectors.online._base import (
    OnlineDetector,
    Periods,
    Searches,
    State,
    state_bytes,
)
from nexus.anomaly.detectors.online._jit import compiled
from nexus.anomaly.detectors.online._periods import dominant_periods

SPREAD_SPAN = 12
"""Values over which the local spread is measured."""
PERIODS_BACK = 3
RESIDUAL_PERIODS = 2
"""Periods the seasonal reference looks back (the median of their values)."""
MIN_TAIL = 10
"""The fewest extreme views a tail is fitted on."""
PERIOD_TOLERANCE = 0.02
"""A period found within this share of the current one is the same period (kept, not relearnt)."""
_REL_FLOOR = 1e-3  # of the window's span: the smallest excess scale and spread considered
_ABS_FLOOR = 1e-12

# The three views (rows of the window arrays), and the columns of `meta` and `counters`.
VALUE, RESIDUAL, SPREAD = 0, 1, 2
_START, _COUNT, _LEARNING = 0, 1, 2  # meta[view]: ring start, views held, views before scoring
_SEEN, _PERIOD = 0, 1  # counters
_LOW, _HIGH = 0, 1  # bounds


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

    def __init__(
        self,
        params: Params | None = None,
        *,
        field: str = "params",
        state_budget: int | None = None,
    ) -> None:
        super().__init__(params, field=field, state_budget=state_budget)
        self._size = int(self.params["window"])
        self._check_budget(f"{field}.window")
        self._learning = int(self.params["learning"])
        self._share = float(self.params["tail_share"])
        self._fixed_period = int(self.params["period"])
        self._every = int(self.params["period_every"])
        self._rings = np.zeros((3, self._size))
        self._sorted = np.zeros((3, self._size + 1))
        self._meta = np.zeros((3, 3), dtype=np.int64)
        self._meta[:, _LEARNING] = self._learning
        self._counters = np.array([0, self._fixed_period], dtype=np.int64)
        self._bounds = np.array([math.inf, -math.inf])

    def update(self, value: float) -> float:
        return float(self.update_many(np.array([value], dtype=np.float64))[0])

    def update_many(self, values: FloatArray, periods: Periods | None = None) -> FloatArray:
        values = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty(len(values))
        if periods is None:
            due, windows = self.period_searches(values)
            periods = due, dominant_periods(windows)
        _run(
            values, out, self._rings, self._sorted, self._meta, self._counters, self._bounds,
            self._share, self._learning, periods[0], periods[1], 2.0,
        )  # fmt: skip
        return out

    def period_searches(self, values: FloatArray) -> Searches:
        """Where period searches fall among `values` (after which of them) and the window each
        looks at. A search looks at the value window only, which holds the last values whatever
        else was learnt, so a call's searches are all made first (holding the GIL once, for
        all of a source's values together: `dominant_periods`) and the compiled loop, which
        releases it, goes through the whole series."""
        seen = int(self._counters[_SEEN]) + np.arange(1, len(values) + 1)
        due = np.flatnonzero((seen >= self._learning) & (seen % self._every == 0))
        if self._fixed_period or not len(due):
            return due[:0], []
        history = np.concatenate((self._window(VALUE), values))
        ends = due + 1 + (len(history) - len(values))
        return due, [history[max(0, end - self._size) : end] for end in ends.tolist()]

    def _window(self, view: int) -> FloatArray:
        """A view's window, oldest first."""
        start, count = int(self._meta[view, _START]), int(self._meta[view, _COUNT])
        ring = self._rings[view]
        return np.concatenate((ring[start:count], ring[: max(0, start + count - self._size)]))

    def state_bound(self) -> int:
        window = 8 * self._size
        return state_bytes(window, window, window, 32)  # the three views' windows, the scalars

    def get_state(self) -> State:
        seen, period = (int(v) for v in self._counters)
        low, high = (float(v) for v in self._bounds)
        return {
            "values": self._window(VALUE),
            "residuals": self._window(RESIDUAL),
            "spreads": self._window(SPREAD),
            "scalars": np.array([seen, period, low, high], dtype=float),
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
        for view, values in enumerate(tails):  # VALUE, RESIDUAL, SPREAD
            count = len(values)
            self._rings[view, :count] = values
            self._sorted[view, :count] = np.sort(values)
            self._meta[view, _START] = 0
            self._meta[view, _COUNT] = count
        self._counters[:] = (int(seen), int(period))
        self._bounds[:] = (low, high)


@compiled
def _run(
    values: FloatArray,
    out: FloatArray,
    rings: FloatArray,
    ordered: FloatArray,
    meta: np.ndarray,
    counters: np.ndarray,
    bounds: FloatArray,
    share: float,
    learning: int,
    due: np.ndarray,
    periods: np.ndarray,
    square: float,
) -> None:  # pragma: no cover - compiled
    """Scores and learns `values` into `out`; after `values[due[j]]`, `periods[j]` is what the
    period search found."""
    size = rings.shape[1]
    search = 0
    for i in range(len(values)):
        value = values[i]
        bounds[_LOW] = min(bounds[_LOW], value)
        bounds[_HIGH] = max(bounds[_HIGH], value)
        p = _learn(VALUE, value, rings, ordered, meta, share)
        spread = _log_spread(rings, meta, bounds, size, square)
        p = min(p, _learn(SPREAD, spread, rings, ordered, meta, share))
        views = 2
        period = counters[_PERIOD]
        if period and meta[VALUE, _COUNT] > period + 1:
            residual = _seasonal_residual(rings, meta, value, period, size)
            p = min(p, _learn(RESIDUAL, residual, rings, ordered, meta, share))
            views = 3
        p = min(1.0, views * p)  # the smallest of several probabilities, corrected (Bonferroni)
        counters[_SEEN] += 1
        out[i] = 0.0 if counters[_SEEN] <= learning else 1.0 - p
        if search < len(due) and due[search] == i:
            _new_period(periods[search], meta, counters, learning)
            search += 1


@compiled
def _new_period(
    found: int, meta: np.ndarray, counters: np.ndarray, learning: int
) -> None:  # pragma: no cover - compiled
    """Takes the period a search found, unless it is the current one estimated a little
    differently; the residuals then start over, trusted after RESIDUAL_PERIODS periods."""
    current = counters[_PERIOD]
    if found and current and abs(found - current) <= PERIOD_TOLERANCE * current:
        return
    if found != current:
        counters[_PERIOD] = found
        meta[RESIDUAL, _START] = 0
        meta[RESIDUAL, _COUNT] = 0
        meta[RESIDUAL, _LEARNING] = max(learning, RESIDUAL_PERIODS * found)


@compiled
def _learn(
    view: int, x: float, rings: FloatArray, ordered: FloatArray, meta: np.ndarray, share: float
) -> float:  # pragma: no cover - compiled
    """Two-sided tail probability of `x` against a view's window (1.0 while learning), then
    learns `x` (the oldest view leaves a full window)."""
    size = rings.shape[1]
    s = ordered[view]
    n = meta[view, _COUNT]
    position = _bisect_right(s, n, x)  # where `x` goes, which the probability needs too
    p = _probability(s, n, x, position, share) if n >= meta[view, _LEARNING] else 1.0
    start = meta[view, _START]
    if n < size:
        s[position + 1 : n + 1] = s[position:n]  # numba copies an overlapping source first
        s[position] = x
        rings[view, (start + n) % size] = x
        meta[view, _COUNT] = n + 1
        return p
    # full: the oldest view leaves as `x` comes, one shift of what lies between them
    oldest = rings[view, start]
    rings[view, start] = x
    meta[view, _START] = (start + 1) % size
    gone = _bisect_left(s, n, oldest)
    if position <= gone:
        s[position + 1 : gone + 1] = s[position:gone]
        s[position] = x
    else:
        s[gone : position - 1] = s[gone + 1 : position]
        s[position - 1] = x
    return p


@compiled
def _probability(
    s: FloatArray, n: int, x: float, right: int, share: float
) -> float:  # pragma: no cover - compiled
    """The two-sided tail probability of `x` against the sorted `s[:n]`; `right` is
    `_bisect_right(s, n, x)`."""
    k = max(MIN_TAIL, int(share * n))
    floor = max(_REL_FLOOR * (s[n - 1] - s[0]), _ABS_FLOOR * max(abs(s[n - 1]), abs(s[0])), 1e-300)
    upper, lower = s[n - k], s[k - 1]
    if x > upper:
        total = 0.0
        for j in range(n - k, n):
            total += s[j]
        scale = max(total / k - upper, floor)
        fitted = (k / n) * math.exp(-(x - upper) / scale)
        p = max(fitted, (n - _bisect_left(s, n, x)) / n)
    elif x < lower:
        total = 0.0
        for j in range(k):
            total += s[j]
        scale = max(lower - total / k, floor)
        fitted = (k / n) * math.exp(-(lower - x) / scale)
        p = max(fitted, right / n)
    else:
        p = min(n - _bisect_left(s, n, x), right) / n
    return min(1.0, 2.0 * p)


@compiled
def _bisect_left(s: FloatArray, n: int, x: float) -> int:  # pragma: no cover - compiled
    low, high = 0, n
    while low < high:
        middle = (low + high) // 2
        if s[middle] < x:
            low = middle + 1
        else:
            high = middle
    return low


@compiled
def _bisect_right(s: FloatArray, n: int, x: float) -> int:  # pragma: no cover - compiled
    low, high = 0, n
    while low < high:
        middle = (low + high) // 2
        if x < s[middle]:
            high = middle
        else:
            low = middle + 1
    return low


@compiled
def _back(rings: FloatArray, meta: np.ndarray, steps: int, size: int) -> float:  # pragma: no cover
    """The value `steps` back in the value window (1: the latest)."""
    return float(rings[VALUE, (meta[VALUE, _START] + meta[VALUE, _COUNT] - steps) % size])


@compiled
def _log_spread(
    rings: FloatArray, meta: np.ndarray, bounds: FloatArray, size: int, square: float
) -> float:  # pragma: no cover - compiled
    """Log of the standard deviation of the last SPREAD_SPAN values (the latest included).
    `square` is 2.0, given at run time: Python squares with the C library's pow, which is not
    always x * x, and a constant exponent would be compiled into a multiplication."""
    span = min(SPREAD_SPAN, meta[VALUE, _COUNT])
    latest = (meta[VALUE, _START] + meta[VALUE, _COUNT] - 1) % size
    values = rings[VALUE]
    total = 0.0
    at = latest
    for _ in range(span):  # the latest first, as the sums always went
        total += values[at]
        at = at - 1 if at else size - 1  # a step back in the ring, without a division
    mean = total / span
    squares = 0.0
    at = latest
    for _ in range(span):
        squares += math.pow(values[at] - mean, square)
        at = at - 1 if at else size - 1
    deviation = math.sqrt(squares / span)
    return math.log(deviation + _REL_FLOOR * (bounds[_HIGH] - bounds[_LOW]) + _ABS_FLOOR)


@compiled
def _seasonal_residual(
    rings: FloatArray, meta: np.ndarray, value: float, period: int, size: int
) -> float:  # pragma: no cover - compiled
    """`value` minus the median of its nearest matches one, two and three periods back, each
    the closest of the values a step either side of the period (a period is known to a step)."""
    # the two lowest matches as they come (of at most three): the median is the second
    first = second = 0.0
    found = 0
    for k in range(1, PERIODS_BACK + 1):
        steps = 1 + k * period  # the window holds `value` as its latest
        if steps + 1 > meta[VALUE, _COUNT]:
            break
        best = _back(rings, meta, steps + 1, size)
        for candidate in (_back(rings, meta, steps, size), _back(rings, meta, steps - 1, size)):
            if abs(candidate - value) < abs(best - value):
                best = candidate
        if found == 0:
            first = best
        elif found == 1:
            first, second = (best, first) if best < first else (first, best)
        elif best < first:
            first, second = best, first
        elif best < second:
            second = best
        found += 1
    median = first if found == 1 else second  # the middle one of three, the upper of two
    return value - median
