"""Adaptive resonance over the shape of the last few values: a sequence detector (ARTime-style).

Each value closes a pattern, the last `window` values scaled into [0, 1] by the range seen so
far and complement-coded (each feature v beside 1 - v, so a pattern's norm is `window`). A fuzzy
ART network (Carpenter, Grossberg and Rosen 1991, the network ARTime builds on) holds up to
`categories` learnt patterns: a pattern's match with a category is |pattern ^ category| / window
(^ the element-wise minimum). The category of the largest choice |pattern ^ category| /
(0.001 + |category|) among those matching at least `vigilance` resonates and learns the pattern
(moves `rate` of the way towards pattern ^ category); when none matches, the pattern becomes a
category of its own (the least recently used one makes room). The raw score of a value is its
pattern's mismatch, 1 - the best match over all categories: how far the shape of the latest
values is from every shape seen before, whatever their level alone (`tails`) or the runs of
levels before them (`context`) say.

The likelihood is 1 - the upper tail probability of the mismatch against the last `memory`
mismatches: the share at least as large, and beyond the `tail_share` largest an exponential fit
to their excesses (peaks over threshold, as `tails` judges its views), never below that share.
Nothing is scored during the learning period. The categories, the last values, the mismatches
(a ring in arrival order and the same sorted)
are numpy arrays stepped through by a compiled loop (`_run`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from nexus.anomaly.detectors._params import ParamSpec, integer, number
from nexus.anomaly.detectors._types import FloatArray, Params
from nexus.anomaly.detectors.online._base import OnlineDetector, Periods, State, state_bytes
from nexus.anomaly.detectors.online._jit import compiled

MIN_TAIL = 10
"""The fewest mismatches an exponential tail is fitted on."""
MIN_SCORES = 100
"""The fewest mismatches held before a value is scored (whatever the learning period)."""
CHOICE_ALPHA = 0.001
"""Fuzzy ART's choice parameter (small: the category that the pattern fills the most of wins)."""
_REL_FLOOR = 1e-3  # of the mismatches' span: the smallest excess scale considered
_ABS_FLOOR = 1e-12

_SEEN, _HELD = 0, 1  # meta: values seen, categories held
_START, _COUNT = 0, 1  # window: the mismatch ring's start, how many it holds
_LOW, _HIGH = 0, 1  # bounds


class AdaptiveResonance(OnlineDetector):
    """See the module docstring."""

    KIND = "resonance"
    DEFAULT_THRESHOLD = 0.999
    DESCRIPTION = (
        "Fuzzy adaptive resonance over the shape of the last values: how unlike every learnt"
        " pattern the latest one is"
    )
    PARAMS = (
        ParamSpec("window", 8, integer(2, 64), "Values in a pattern (the latest included)"),
        ParamSpec(
            "vigilance", 0.95, number(0.0, 1.0, open_below=True), "Match a category must reach"
        ),
        ParamSpec("rate", 0.1, number(0.0, 1.0, open_below=True), "How far a category learns"),
        ParamSpec("categories", 200, integer(1, 2000), "Patterns (categories) kept at most"),
        ParamSpec("memory", 2000, integer(MIN_SCORES, 20_000), "Mismatches a value is judged on"),
        ParamSpec("learning", 150, integer(10, 20_000), "Values seen before anything is scored"),
        ParamSpec(
            "tail_share", 0.02, number(0.0, 0.5, open_below=True), "Share of mismatches in a tail"
        ),
    )

    def __init__(
        self,
        params: Params | None = None,
        *,
        field: str = "params",
        state_budget: int | None = None,
    ) -> None:
        super().__init__(params, field=field, state_budget=state_budget)
        self._width = int(self.params["window"])
        self._most = int(self.params["categories"])
        self._memory = int(self.params["memory"])
        self._check_budget(f"{field}.categories")
        self._settings = np.array(
            [
                float(self.params["vigilance"]),
                float(self.params["rate"]),
                float(self.params["tail_share"]),
                float(self.params["learning"]),
            ]
        )
        self._weights = np.ones((self._most, 2 * self._width))
        self._used = np.zeros(self._most)
        self._recent = np.zeros(self._width)
        # the mismatches: a ring in arrival order, the same sorted, where the ring starts and
        # how many it holds
        self._ring = np.zeros(self._memory)
        self._sorted = np.zeros(self._memory)
        self._window = np.zeros(2, dtype=np.int64)
        self._meta = np.zeros(2, dtype=np.int64)
        self._bounds = np.array([math.inf, -math.inf])

    def update(self, value: float) -> float:
        return float(self.update_many(np.array([value], dtype=np.float64))[0])

    def update_many(self, values: FloatArray, periods: Periods | None = None) -> FloatArray:
        values = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty(len(values))
        _run(
            values, out, self._weights, self._used, self._recent, self._ring, self._sorted,
            self._window, self._meta, self._bounds, self._settings,
        )  # fmt: skip
        return out

    def state_bound(self) -> int:
        return state_bytes(
            8 * self._most * 2 * self._width,  # categories
            8 * self._most,  # when each was last used
            8 * self._width,  # the last values
            8 * self._memory,  # the mismatches
            24,  # seen, low, high
        )

    def get_state(self) -> State:
        seen, held = int(self._meta[_SEEN]), int(self._meta[_HELD])
        recent = [self._recent[i % self._width] for i in range(max(0, seen - self._width), seen)]
        start, count = int(self._window[_START]), int(self._window[_COUNT])
        return {
            "categories": self._weights[:held].copy(),
            "used": self._used[:held].copy(),
            "recent": np.array(recent, dtype=np.float64),
            "mismatches": np.roll(self._ring, -start)[:count],
            "scalars": np.array([seen, *self._bounds.tolist()]),
        }

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        try:
            seen, low, high = (float(v) for v in np.asarray(state["scalars"], dtype=float).ravel())
            weights = np.asarray(state["categories"], dtype=np.float64)
            used = np.asarray(state["used"], dtype=np.float64).ravel()
            recent = np.asarray(state["recent"], dtype=np.float64).ravel()
            mismatches = np.asarray(state["mismatches"], dtype=np.float64).ravel()
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a resonance detector's state: {err}") from None
        arrays = (weights, used, recent, mismatches)
        if not all(np.all(np.isfinite(a)) for a in arrays) or not math.isfinite(seen):
            raise ValueError("a resonance detector's state that is not finite")
        count = int(seen)
        if (
            weights.ndim != 2
            or weights.shape[0] > self._most
            or weights.shape[1] != 2 * self._width
            or len(used) != len(weights)
            or len(recent) != min(count, self._width)
            or len(mismatches) > self._memory
            or count != seen
            or count < 0
        ):
            raise ValueError("a resonance detector's state that does not fit these parameters")
        held = len(weights)
        self._weights[:held], self._weights[held:] = weights, 1.0
        self._used[:held], self._used[held:] = used, 0.0
        for at, value in enumerate(recent.tolist(), start=count - len(recent)):
            self._recent[at % self._width] = value
        self._ring[: len(mismatches)] = mismatches
        self._sorted[: len(mismatches)] = np.sort(mismatches)
        self._window[:] = (0, len(mismatches))
        self._meta[:] = (count, held)
        self._bounds[:] = (low, high)


@compiled
def _run(
    values: FloatArray,
    out: FloatArray,
    weights: FloatArray,
    used: FloatArray,
    recent: FloatArray,
    ring: FloatArray,
    ordered: FloatArray,
    window: np.ndarray,
    meta: np.ndarray,
    bounds: FloatArray,
    settings: FloatArray,
) -> None:  # pragma: no cover - compiled
    """Scores and learns `values` into `out`."""
    vigilance, rate, share, learning = settings[0], settings[1], settings[2], settings[3]
    width = len(recent)
    pattern = np.empty(2 * width)
    for i in range(len(values)):
        value = values[i]
        bounds[_LOW] = min(bounds[_LOW], value)
        bounds[_HIGH] = max(bounds[_HIGH], value)
        seen = meta[_SEEN]
        recent[seen % width] = value
        meta[_SEEN] = seen + 1
        out[i] = 0.0
        if seen + 1 < width:
            continue
        span = max(bounds[_HIGH] - bounds[_LOW], 1e-12)
        for j in range(width):  # the latest value first
            scaled = (recent[(seen - j) % width] - bounds[_LOW]) / span
            pattern[j] = scaled
            pattern[width + j] = 1.0 - scaled
        mismatch = _resonate(pattern, weights, used, meta, vigilance, rate, float(seen))
        n = window[_COUNT]
        if seen + 1 > learning and n >= MIN_SCORES:
            out[i] = 1.0 - _upper_tail(ordered, n, mismatch, share)
        _remember(mismatch, ring, ordered, window)


@compiled
def _resonate(
    pattern: FloatArray,
    weights: FloatArray,
    used: FloatArray,
    meta: np.ndarray,
    vigilance: float,
    rate: float,
    now: float,
) -> float:  # pragma: no cover - compiled
    """The pattern's mismatch with its categories (1 - the best match), then fuzzy ART's
    learning: the resonating category moves towards it, or it becomes a category."""
    width = len(pattern) // 2
    held = meta[_HELD]
    best_match = 0.0
    winner = -1
    best_choice = -1.0
    for c in range(held):
        overlap = 0.0
        norm = 0.0
        for j in range(2 * width):
            overlap += min(pattern[j], weights[c, j])
            norm += weights[c, j]
        match = overlap / width
        best_match = max(best_match, match)
        choice = overlap / (CHOICE_ALPHA + norm)
        if match >= vigilance and choice > best_choice:
            best_choice = choice
            winner = c
    if winner >= 0:
        for j in range(2 * width):
            w = weights[winner, j]
            weights[winner, j] = rate * min(pattern[j], w) + (1.0 - rate) * w
    elif held < len(used):
        winner = held
        meta[_HELD] = held + 1
        weights[winner] = pattern
    else:
        winner = int(np.argmin(used))  # the least recently used makes room
        weights[winner] = pattern
    used[winner] = now
    return 1.0 - best_match


@compiled
def _remember(
    x: float, ring: FloatArray, ordered: FloatArray, window: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Learns the mismatch `x` into the ring and its sorted copy; in a full ring the oldest
    leaves."""
    size = len(ring)
    start, n = window[_START], window[_COUNT]
    if n == size:
        oldest = ring[start]
        ring[start] = x
        window[_START] = (start + 1) % size
        at = np.searchsorted(ordered[:n], oldest)
        for j in range(at, n - 1):
            ordered[j] = ordered[j + 1]
        n -= 1
    else:
        ring[(start + n) % size] = x
    at = np.searchsorted(ordered[:n], x, side="right")
    for j in range(n, at, -1):
        ordered[j] = ordered[j - 1]
    ordered[at] = x
    window[_COUNT] = n + 1


@compiled
def _upper_tail(
    s: FloatArray, n: int, x: float, share: float
) -> float:  # pragma: no cover - compiled
    """The probability of a mismatch at least `x` against the sorted `s[:n]`: the share at
    least as large, beyond the tail's threshold never below an exponential fit to the excesses."""
    k = max(MIN_TAIL, int(share * n))
    held = s[:n]
    at_least = (n - np.searchsorted(held, x, side="left")) / n
    threshold = s[n - k]
    if x <= threshold:
        return at_least
    total = 0.0
    for j in range(n - k, n):
        total += s[j]
    scale = max(total / k - threshold, _ABS_FLOOR + _REL_FLOOR * (s[n - 1] - s[0]))
    return min(1.0, max((k / n) * math.exp(-(x - threshold) / scale), at_least))
