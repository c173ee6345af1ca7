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
sorted, in blocks of about BLOCK values: a view comes and goes with a shift within one block,
not of a third of the window), stepped through by a compiled loop (`_run`) that gives the same
likelihoods as the straightforward Python it replaced (tests/test_online_compiled.py holds
that reference): the sorted values are the same, and the tails are summed in the same order.
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
from nexus.anomaly.detectors.online._jit import compiled, inlined
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
BLOCK = 64
"""Sorted values a block holds after the blocks are evened out; they are evened out again when
one fills (1.5 * BLOCK) or empties, so finding a place and shifting cost tens of steps."""
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
        # per view: its sorted values in blocks; the blocks' sizes, then how many are in use
        self._blocks = np.zeros((3, self._size // BLOCK + 2, BLOCK + BLOCK // 2))
        self._sizes = np.zeros((3, self._size // BLOCK + 3), dtype=np.int64)
        self._sizes[:, -1] = 1
        self._scratch = np.zeros(self._size + 1)
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
            values, out, self._rings, (self._blocks, self._sizes, self._scratch),
            self._meta, self._counters, self._bounds, self._share, self._learning,
            periods[0], periods[1], 2.0,
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
            _fill(self._blocks[view], self._sizes[view], np.sort(values))
            self._meta[view, _START] = 0
            self._meta[view, _COUNT] = count
        self._counters[:] = (int(seen), int(period))
        self._bounds[:] = (low, high)


@compiled
def _run(
    values: FloatArray,
    out: FloatArray,
    rings: FloatArray,
    ordered: tuple[FloatArray, np.ndarray, FloatArray],
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
    view: int,
    x: float,
    rings: FloatArray,
    ordered: tuple[FloatArray, np.ndarray, FloatArray],
    meta: np.ndarray,
    share: float,
) -> float:  # pragma: no cover - compiled
    """Two-sided tail probability of `x` against a view's window (1.0 while learning), then
    learns `x` (the oldest view leaves a full window). `ordered`: the sorted blocks of every
    view, their sizes and how many each view uses, and room for evening them out."""
    all_blocks, all_sizes, scratch = ordered
    blocks, sizes = all_blocks[view], all_sizes[view]
    size = rings.shape[1]
    n = meta[view, _COUNT]
    if n == 0:  # a new window, or the residuals' started over
        sizes[-1] = 1
        sizes[0] = 0
    # where `x` goes (after its equals), which the probability needs too: its block, its place
    block, right = _blocks_below(blocks, sizes, x, True) if n else (0, 0)
    place = 0
    if block == sizes[-1]:  # above every value: at the end of the last block
        block -= 1
        place = sizes[block]
    elif n:
        place = _below(blocks[block], sizes[block], x, True)
        right += place
    p = 1.0
    if n >= meta[view, _LEARNING]:
        p = _probability(blocks, sizes, n, x, right, share)
    _insert(blocks, sizes, n, x, block, place, scratch)
    start = meta[view, _START]
    if n < size:
        rings[view, (start + n) % size] = x
        meta[view, _COUNT] = n + 1
        return p
    # full: the oldest view leaves as `x` came
    oldest = rings[view, start]
    rings[view, start] = x
    meta[view, _START] = (start + 1) % size
    _remove(blocks, sizes, n + 1, oldest, scratch)
    return p


@inlined
def _probability(
    blocks: FloatArray,
    sizes: np.ndarray,
    n: int,
    x: float,
    right: int,
    share: float,
) -> float:  # pragma: no cover - compiled
    """The two-sided tail probability of `x` against a view's `n` sorted values; `right` is
    their bisect right of `x`."""
    k = max(MIN_TAIL, int(share * n))
    first, last = (
        _at(blocks, sizes, n, 0),
        _at(blocks, sizes, n, n - 1),
    )
    floor = max(_REL_FLOOR * (last - first), _ABS_FLOOR * max(abs(last), abs(first)), 1e-300)
    upper, lower = (
        _at(blocks, sizes, n, n - k),
        _at(blocks, sizes, n, k - 1),
    )
    if x > upper:
        total = _sum_ranks(blocks, sizes, n, n - k, k)
        scale = max(total / k - upper, floor)
        fitted = (k / n) * math.exp(-(x - upper) / scale)
        p = max(fitted, (n - _rank(blocks, sizes, n, x, False)) / n)
    elif x < lower:
        total = _sum_ranks(blocks, sizes, n, 0, k)
        scale = max(lower - total / k, floor)
        fitted = (k / n) * math.exp(-(lower - x) / scale)
        p = max(fitted, right / n)
    else:
        p = min(n - _rank(blocks, sizes, n, x, False), right) / n
    return min(1.0, 2.0 * p)


@inlined
def _blocks_below(
    blocks: FloatArray, sizes: np.ndarray, x: float, right: bool
) -> tuple[int, int]:  # pragma: no cover - compiled
    """The blocks whose values are all below `x` (at or below it, `right`), which come first,
    and the values they hold: counted, not searched, so that no branch is mispredicted."""
    count = before = 0
    if right:
        for block in range(sizes[-1]):
            below = blocks[block, sizes[block] - 1] <= x
            count += below
            before += sizes[block] * below
    else:
        for block in range(sizes[-1]):
            below = blocks[block, sizes[block] - 1] < x
            count += below
            before += sizes[block] * below
    return count, before


@inlined
def _below(row: FloatArray, m: int, x: float, right: bool) -> int:  # pragma: no cover - compiled
    """The sorted `row[:m]`'s values below `x` (at or below it, `right`), counted: its bisect."""
    count = 0
    if right:
        for j in range(m):
            count += row[j] <= x
    else:
        for j in range(m):
            count += row[j] < x
    return count


@compiled
def _rank(
    blocks: FloatArray,
    sizes: np.ndarray,
    n: int,
    x: float,
    right: bool,
) -> int:  # pragma: no cover - compiled
    """The sorted values' bisect of `x`: right (values at or below it) or left (below it)."""
    block, before = _blocks_below(blocks, sizes, x, right)
    if block == sizes[-1]:
        return n
    return before + _below(blocks[block], sizes[block], x, right)


@inlined
def _locate(
    blocks: FloatArray, sizes: np.ndarray, n: int, rank: int
) -> tuple[int, int]:  # pragma: no cover - compiled
    """The block and place of the `rank`-th sorted value, counted from the nearer end."""
    if 2 * rank < n:
        block = 0
        while rank >= sizes[block]:
            rank -= sizes[block]
            block += 1
        return block, rank
    rank = n - 1 - rank
    block = sizes[-1] - 1
    while rank >= sizes[block]:
        rank -= sizes[block]
        block -= 1
    return block, sizes[block] - 1 - rank


@inlined
def _at(
    blocks: FloatArray, sizes: np.ndarray, n: int, rank: int
) -> float:  # pragma: no cover - compiled
    """The `rank`-th sorted value (0: the smallest)."""
    block, place = _locate(blocks, sizes, n, rank)
    return float(blocks[block, place])


@compiled
def _sum_ranks(
    blocks: FloatArray,
    sizes: np.ndarray,
    n: int,
    rank: int,
    count: int,
) -> float:  # pragma: no cover - compiled
    """The sum of `count` sorted values from the `rank`-th up, added smallest first (as the
    sorted window always summed them)."""
    block, place = _locate(blocks, sizes, n, rank)
    total = 0.0
    while count > 0:
        take = min(sizes[block] - place, count)
        for j in range(place, place + take):
            total += blocks[block, j]
        count -= take
        block += 1
        place = 0
    return total


@inlined
def _insert(
    blocks: FloatArray,
    sizes: np.ndarray,
    n: int,
    x: float,
    block: int,
    place: int,
    scratch: FloatArray,
) -> None:  # pragma: no cover - compiled
    """Adds `x` to `n` sorted values at `place` in `block`."""
    row = blocks[block]
    m = sizes[block]
    for j in range(m, place, -1):  # a loop: a slice would copy its overlapping source first
        row[j] = row[j - 1]
    row[place] = x
    sizes[block] = m + 1
    if m + 1 == blocks.shape[1]:
        _even_out(blocks, sizes, n + 1, scratch)


@inlined
def _remove(
    blocks: FloatArray,
    sizes: np.ndarray,
    n: int,
    x: float,
    scratch: FloatArray,
) -> None:  # pragma: no cover - compiled
    """Takes one `x` (held) out of `n` sorted values: from the first block whose last value
    is at or above it, which holds the first of its equals."""
    block = _blocks_below(blocks, sizes, x, False)[0]
    row = blocks[block]
    m = sizes[block]
    place = _below(row, m, x, False)
    for j in range(place, m - 1):
        row[j] = row[j + 1]
    sizes[block] = m - 1
    if m == 1:
        _even_out(blocks, sizes, n - 1, scratch)


@compiled
def _even_out(
    blocks: FloatArray,
    sizes: np.ndarray,
    n: int,
    scratch: FloatArray,
) -> None:  # pragma: no cover - compiled
    """Spreads a view's `n` sorted values evenly over blocks of at most BLOCK."""
    at = 0
    for block in range(sizes[-1]):
        m = sizes[block]
        scratch[at : at + m] = blocks[block, :m]
        at += m
    _fill(blocks, sizes, scratch[:n])


@compiled
def _fill(
    blocks: FloatArray, sizes: np.ndarray, values: FloatArray
) -> None:  # pragma: no cover - compiled
    """A view's blocks holding the sorted `values`, spread evenly over as few blocks of at
    most BLOCK as hold them (one, empty, for none)."""
    n = len(values)
    count = max(1, (n + BLOCK - 1) // BLOCK)
    base, extra = n // count, n % count
    at = 0
    for block in range(count):
        m = base + (1 if block < extra else 0)
        blocks[block, :m] = values[at : at + m]
        sizes[block] = m
        at += m
    sizes[-1] = count


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
