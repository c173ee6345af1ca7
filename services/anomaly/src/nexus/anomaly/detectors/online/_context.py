"""The contextual novelty detector: how much of a value's context was never seen before.

In the spirit of the Contextual Anomaly Detector (CAD OSE, Smirnov and Ivanov), written anew for a
stream whose range is not known in advance:

- Quantisation. The learning period's range is cut into `levels` bins (its min and max mid-bin,
  so a hair beyond them is not new). Bins keep that width up to `levels` widths either side of
  the lowest bin's start; further out, each doubling of the distance holds `levels / 2` bins, so a
  far spike or a heavy tail makes a few new levels, not hundreds. When the middle 90% of the last
  `learning` values span more than twice `levels` bins (a level shift, a trend, a range learnt
  too narrow), the width doubles and the memory is re-mapped exactly (every bin of the old width
  lies in one bin of the new).
- Events and contexts. An event is a value's level and whether it moved there or stayed; its
  context of order k is the levels of the k runs (stretches at one level) before the current one.
- Novelty. An event never seen scores 1. A known event scores by the share of its contexts (orders
  1..`order`) never seen with it, at most 0.5 (the longest known context's count breaks ties).
  Every pair is then learnt, so a repeated event is no longer new: the likelihood falls back once
  an event is learnt.
- Likelihood. The novelty times one minus the recent rate of new events (an average over about
  `rate_memory` values): a new event in a stream that rarely has any is more telling than one in
  a stream that keeps producing them (a noisy source, or one just after a change).
- Memory. At most `max_contexts` pairs, least recently seen evicted first, so memory, time per
  value and the state stay bounded whatever the stream; fewer when the detector is given a
  `state_budget` (its share of a source's state) that they would not fit (at least
  `MIN_CONTEXTS`). A state saved with more pairs resumes with its most recently seen ones.

The learning period's values are kept, and learnt once the range is set; until then it returns 0.
On NAB's part in ../shared/data (bench/anomaly_nab.py) the event novelty and the new-event rate
carry the score; longer contexts change the order of scores below the flagging threshold only.

The state is numpy arrays stepped through by a compiled loop (`_run`): the memory is a hash
table of (context, event) rows with a doubly linked list in least-recently-seen order, which
gives the same likelihoods as the ordered dictionary of tuples it replaced
(tests/test_online_compiled.py holds that reference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from nexus.anomaly.detectors._params import ParamSpec, Parser, integer
from nexus.anomaly.detectors._types import FloatArray, Params, ParamValue
from nexus.anomaly.detectors.online._base import OnlineDetector, Periods, State, state_bytes
from nexus.anomaly.detectors.online._jit import compiled

_RELATIVE_WIDTH_FLOOR = 1e-9
"""The narrowest bin, relative to the learnt values' magnitude (a flat learning period)."""
_ABSOLUTE_WIDTH_FLOOR = 1e-12
_FAR = 2.0**30
"""Values further than this many widths from the origin count as this far (bounded levels)."""
_PAD = np.iinfo(np.int32).min
"""Fills the unused columns of a shorter pair in the memory."""
_MOVED, _STAYED = 1, 2
"""An event's second part: the value moved to its level, or stayed at it."""
_PARTIAL = 0.5
"""The most a known event scores when some of its contexts are new."""
MIN_CONTEXTS = 256
"""The fewest pairs a detector sharing a budget keeps (fewer than `max_contexts` when the budget
is short): about what ten levels' events and their recent contexts take. A source too wide for
each value's detector to keep this many is refused (`SourceDetector.max_width`)."""
_FIRST_ENTRIES = 64
"""Pairs a fresh detector has room for (the arrays grow by doubling, up to `max_contexts`)."""

# scale: the quantisation and the rate of new events
_ORIGIN, _WIDTH, _RATE = 0, 1, 2
# counters: the current run, the clock of range checks, the rings, the memory's list and size
_LEVEL, _RUN, _SINCE, _RUNS, _RECENT_START, _RECENT, _BUFFERED, _SIZE, _HEAD, _TAIL, _NEED = range(
    11
)
_NONE = -1
"""No entry (an empty slot of the table, the end of the list)."""


def _even(parse: Parser) -> Parser:
    def parse_even(raw: ParamValue) -> ParamValue:
        value = parse(raw)
        if int(value) % 2:
            raise ValueError("must be an even integer")
        return value

    return parse_even


class ContextNovelty(OnlineDetector):
    """Likelihood = the share of a value's contexts (recent level runs) never seen before."""

    KIND = "context"
    DEFAULT_THRESHOLD = 0.99
    DESCRIPTION = "Share of the value's contexts (recent quantised level runs) never seen before"
    PARAMS = (
        ParamSpec(
            "levels", 10, _even(integer(2, 64)), "Quantisation bins over the learnt range (even)"
        ),
        ParamSpec("order", 3, integer(1, 16), "Longest context: level runs before a value"),
        ParamSpec("learning", 300, integer(10, 20_000), "Values learnt before scoring (returns 0)"),
        ParamSpec(
            "max_contexts",
            20_000,
            integer(16, 200_000),
            "Most (context, event) pairs remembered; least recently seen evicted first (fewer"
            " when a source's values share its state's room)",
        ),
        ParamSpec(
            "rate_memory",
            300,
            integer(1, 100_000),
            "Values the recent rate of new events is averaged over",
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
        self._levels = int(self.params["levels"])
        self._order = int(self.params["order"])
        self._learning = int(self.params["learning"])
        self._rate_weight = 1.0 / int(self.params["rate_memory"])
        asked = int(self.params["max_contexts"])
        self._capacity = asked
        if state_budget is None:  # the parameters alone: all of them must fit
            self._check_budget(f"{field}.max_contexts")
        else:  # a share of a source's budget: as many contexts as fit it
            self._capacity = max(min(asked, self._fitting()), min(asked, MIN_CONTEXTS))
            self._check_budget(field)
        self._most = self._capacity + self._order + 1  # pairs held at once, while learning one
        self._scale = np.zeros(3)
        self._counters = np.zeros(11, dtype=np.int64)
        self._runs = np.zeros(self._order, dtype=np.int64)  # levels of the runs before this one
        self._recent = np.zeros(self._learning, dtype=np.int64)  # a ring of the latest levels
        self._buffer = np.zeros(self._learning)  # the learning period's values, until the range
        self._allocate(min(_FIRST_ENTRIES, self._most))

    def state_bound(self) -> int:
        return self._bound(self._capacity)

    def smallest_state(self) -> int:
        return self._bound(min(self._capacity, MIN_CONTEXTS))

    def _bound(self, capacity: int) -> int:
        """The most bytes the state takes with at most `capacity` pairs (`get_state`'s arrays:
        the learning period's values, the scale, the runs, the current run, the recent levels,
        the pairs, their counts)."""
        learning, order = self._learning, self._order
        return state_bytes(
            8 * (learning - 1), 24, 8 * order, 24, 4 * learning, *self._pair_bytes(capacity)
        )

    def _pair_bytes(self, capacity: int) -> tuple[int, int]:
        return capacity * (self._order + 2) * 4, capacity * 8

    def _fitting(self) -> int:
        """The most pairs whose state fits `state_budget`."""
        room = self.state_budget - self._bound(0)
        return max(room // sum(self._pair_bytes(1)), 0)

    def _allocate(self, entries: int) -> None:
        """Empty memory with room for `entries` pairs."""
        self._keys = np.full((entries, self._order + 2), _PAD, dtype=np.int32)
        self._counts = np.zeros(entries, dtype=np.int64)
        self._hashes = np.zeros(entries, dtype=np.int64)
        self._links = np.full((2, entries), _NONE, dtype=np.int32)  # previous, next
        self._free = np.arange(entries - 1, -1, -1, dtype=np.int32)  # a stack of unused entries
        self._table = np.full(_table_size(entries), _NONE, dtype=np.int32)
        self._counters[[_SIZE, _HEAD, _TAIL]] = (0, _NONE, _NONE)

    def _grow(self, required: int) -> None:
        """Room for at least `required` pairs (entries keep their numbers; the table is
        rebuilt)."""
        old = len(self._counts)
        entries = min(max(required, 2 * old), self._most)
        size = int(self._counters[_SIZE])
        keys = np.full((entries, self._order + 2), _PAD, dtype=np.int32)
        keys[:old] = self._keys
        counts, hashes = np.zeros(entries, dtype=np.int64), np.zeros(entries, dtype=np.int64)
        counts[:old], hashes[:old] = self._counts, self._hashes
        links = np.full((2, entries), _NONE, dtype=np.int32)
        links[:, :old] = self._links
        free = np.empty(entries, dtype=np.int32)
        unused = old - size
        free[:unused] = self._free[:unused]
        free[unused : entries - size] = np.arange(old, entries, dtype=np.int32)
        self._keys, self._counts, self._hashes, self._links, self._free = (
            keys, counts, hashes, links, free
        )  # fmt: skip
        self._table = np.full(_table_size(entries), _NONE, dtype=np.int32)
        _rehash(self._table, self._hashes, self._links, self._counters)

    # -- scoring and learning ----------------------------------------------------------------

    def update(self, value: float) -> float:
        return float(self.update_many(np.array([value], dtype=np.float64))[0])

    def update_many(self, values: FloatArray, periods: Periods | None = None) -> FloatArray:
        values = np.ascontiguousarray(values, dtype=np.float64)
        out = np.empty(len(values))
        done = 0
        while True:
            done = _run(
                values, out, done, self._scale, self._counters, self._runs, self._recent,
                self._buffer, self._keys, self._counts, self._hashes, self._links, self._free,
                self._table, self._levels, self._order, self._learning, self._capacity,
                self._rate_weight,
            )  # fmt: skip
            if done == len(values):
                return out
            self._grow(int(self._counters[_NEED]))  # it stopped for room: go on

    # -- state -------------------------------------------------------------------------------

    def get_state(self) -> State:
        counters = self._counters
        size = int(counters[_SIZE])
        keys = np.empty((size, self._order + 2), dtype=np.int32)
        counts = np.empty(size, dtype=np.int64)
        _in_order(self._keys, self._counts, self._links, counters, keys, counts)
        start, held = int(counters[_RECENT_START]), int(counters[_RECENT])
        recent = np.roll(self._recent, -start)[:held] if held == self._learning else self._recent
        return {
            "buffer": self._buffer[: counters[_BUFFERED]].copy(),
            "scale": self._scale.copy(),
            "runs": self._runs[: counters[_RUNS]].copy(),
            "current": counters[[_LEVEL, _RUN, _SINCE]].copy(),
            "recent": recent[:held].astype(np.int32),
            "keys": keys,
            "counts": counts,
        }

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        try:
            buffer = np.asarray(state["buffer"], dtype=np.float64).ravel()
            origin, width, rate = (float(v) for v in np.asarray(state["scale"], dtype=np.float64))
            runs = np.asarray(state["runs"], dtype=np.int64).ravel()
            level, run, since = (int(v) for v in np.asarray(state["current"], dtype=np.int64))
            recent = np.asarray(state["recent"], dtype=np.int64).ravel()
            keys = np.asarray(state["keys"], dtype=np.int64)
            counts = np.asarray(state["counts"], dtype=np.int64).ravel()
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"not a context detector's state: {err}") from None
        if (
            len(buffer) >= self._learning
            or (width == 0.0 and bool(len(runs) or len(recent) or len(counts) or run))
            or not 0 <= since < self._learning
            or not (math.isfinite(origin) and math.isfinite(width) and width >= 0.0)
            or not 0.0 <= rate <= 1.0
            or run not in (0, _MOVED, _STAYED)
            or len(runs) > self._order
            or len(recent) > self._learning
            or (width > 0.0 and bool(len(buffer)))
            or keys.ndim != 2
            or keys.shape != (len(counts), self._order + 2)
            or bool(len(counts) and counts.min() < 1)
            or np.any((keys < np.iinfo(np.int32).min) | (keys > np.iinfo(np.int32).max))
        ):
            raise ValueError("state does not fit this detector's parameters")
        if len(counts) > self._capacity:  # saved with more room: the least recently seen go
            keys, counts = (
                keys[len(counts) - self._capacity :],
                counts[len(counts) - self._capacity :],
            )
        self._scale[:] = (origin, width, rate)
        counters = self._counters
        counters[:] = 0
        counters[[_LEVEL, _RUN, _SINCE]] = (level, run, since)
        self._buffer[: len(buffer)] = buffer
        counters[_BUFFERED] = len(buffer)
        self._runs[: len(runs)] = runs
        counters[_RUNS] = len(runs)
        self._recent[: len(recent)] = recent
        counters[_RECENT] = len(recent)
        self._allocate(min(max(_FIRST_ENTRIES, len(counts) + self._order + 1), self._most))
        _load(
            keys.astype(np.int32), counts, self._keys, self._counts, self._hashes, self._links,
            self._free, self._table, counters,
        )  # fmt: skip


def _table_size(entries: int) -> int:
    """Slots of the hash table for `entries` pairs: a power of two, at most half full."""
    return 1 << (2 * entries - 1).bit_length()


# -- the compiled loop ---------------------------------------------------------------------------
# pragma: no cover below: compiled code (tests/test_online_compiled.py checks it against the
# Python reference).


@compiled
def _run(
    values: FloatArray,
    out: FloatArray,
    at: int,
    scale: FloatArray,
    counters: np.ndarray,
    runs: np.ndarray,
    recent: np.ndarray,
    buffer: FloatArray,
    keys: np.ndarray,
    counts: np.ndarray,
    hashes: np.ndarray,
    links: np.ndarray,
    free: np.ndarray,
    table: np.ndarray,
    levels: int,
    order: int,
    learning: int,
    capacity: int,
    rate_weight: float,
) -> int:  # pragma: no cover
    """Scores and learns `values[at:]` into `out`; returns where it stopped: the end, or a value
    whose learning needs more room than the memory has (`counters[_NEED]` pairs)."""
    scratch = np.empty(keys.shape[1], dtype=np.int32)
    i = at
    while i < len(values):
        learnt = scale[_WIDTH] > 0.0
        starting = not learnt and counters[_BUFFERED] + 1 >= learning
        adds = order + 1 if learnt else (order + 1) * learning if starting else 0
        required = min(counters[_SIZE] + adds, capacity + order + 1)
        if required > len(counts):
            counters[_NEED] = required
            return i
        value = values[i]
        if learnt:
            out[i] = _step(
                value, True, scale, counters, runs, recent, keys, counts, hashes, links, free,
                table, scratch, levels, order, learning, capacity, rate_weight,
            )  # fmt: skip
        else:
            buffer[counters[_BUFFERED]] = value
            counters[_BUFFERED] += 1
            if starting:
                _start(
                    scale, counters, runs, recent, buffer, keys, counts, hashes, links, free,
                    table, scratch, levels, order, learning, capacity, rate_weight,
                )  # fmt: skip
            out[i] = 0.0
        i += 1
    return i


@compiled
def _start(
    scale: FloatArray,
    counters: np.ndarray,
    runs: np.ndarray,
    recent: np.ndarray,
    buffer: FloatArray,
    keys: np.ndarray,
    counts: np.ndarray,
    hashes: np.ndarray,
    links: np.ndarray,
    free: np.ndarray,
    table: np.ndarray,
    scratch: np.ndarray,
    levels: int,
    order: int,
    learning: int,
    capacity: int,
    rate_weight: float,
) -> None:  # pragma: no cover
    """Sets the range from the learning period's values, then learns them."""
    held = counters[_BUFFERED]
    low = high = buffer[0]
    for j in range(1, held):
        if buffer[j] < low:
            low = buffer[j]
        if buffer[j] > high:
            high = buffer[j]
    floor = max(_RELATIVE_WIDTH_FLOOR * max(abs(low), abs(high)), _ABSOLUTE_WIDTH_FLOOR)
    width = max((high - low) / (levels - 1), floor)
    scale[_WIDTH] = width
    scale[_ORIGIN] = low - width / 2  # the extremes mid-bin: a hair beyond is not new
    counters[_BUFFERED] = 0
    for j in range(held):
        _step(
            buffer[j], False, scale, counters, runs, recent, keys, counts, hashes, links, free,
            table, scratch, levels, order, learning, capacity, rate_weight,
        )  # fmt: skip


@compiled
def _step(
    value: float,
    score: bool,
    scale: FloatArray,
    counters: np.ndarray,
    runs: np.ndarray,
    recent: np.ndarray,
    keys: np.ndarray,
    counts: np.ndarray,
    hashes: np.ndarray,
    links: np.ndarray,
    free: np.ndarray,
    table: np.ndarray,
    scratch: np.ndarray,
    levels: int,
    order: int,
    learning: int,
    capacity: int,
    rate_weight: float,
) -> float:  # pragma: no cover
    level = _quantise((value - scale[_ORIGIN]) / scale[_WIDTH], levels)
    if counters[_RUN] and level == counters[_LEVEL]:
        counters[_RUN] = _STAYED
    else:
        if counters[_RUN]:
            _push_run(runs, counters, counters[_LEVEL], order)
        counters[_LEVEL] = level
        counters[_RUN] = _MOVED
    likelihood = 0.0
    if score:
        novelty = _novelty(counters, runs, keys, counts, hashes, table, scratch, order)
        rate = scale[_RATE]
        scale[_RATE] = rate + ((1.0 if novelty >= 1.0 else 0.0) - rate) * rate_weight
        likelihood = novelty * (1.0 - rate)
    _learn(counters, runs, keys, counts, hashes, links, free, table, scratch, capacity)
    _push_recent(recent, counters, level, learning)
    counters[_SINCE] += 1
    if counters[_SINCE] >= learning:
        counters[_SINCE] = 0
        while _bulk_span(recent, counters, levels) >= 2 * levels:
            _coarsen(
                scale, counters, runs, recent, keys, counts, hashes, links, free, table, levels
            )
    return likelihood


@compiled
def _push_run(runs: np.ndarray, counters: np.ndarray, level: int, order: int) -> None:
    held = counters[_RUNS]  # pragma: no cover
    if held < order:
        runs[held] = level
        counters[_RUNS] = held + 1
    else:
        for j in range(order - 1):
            runs[j] = runs[j + 1]
        runs[order - 1] = level


@compiled
def _push_recent(recent: np.ndarray, counters: np.ndarray, level: int, learning: int) -> None:
    held, start = counters[_RECENT], counters[_RECENT_START]  # pragma: no cover
    if held < learning:
        recent[(start + held) % learning] = level
        counters[_RECENT] = held + 1
    else:
        recent[start] = level
        counters[_RECENT_START] = (start + 1) % learning


@compiled
def _key(scratch: np.ndarray, counters: np.ndarray, runs: np.ndarray, k: int) -> None:
    """The pair of order `k` into `scratch`: the levels of the last `k` runs, the level, how it
    was reached (padded)."""
    held = counters[_RUNS]  # pragma: no cover
    for j in range(k):
        scratch[j] = runs[held - k + j]
    scratch[k] = counters[_LEVEL]
    scratch[k + 1] = counters[_RUN]
    for j in range(k + 2, len(scratch)):
        scratch[j] = _PAD


@compiled
def _novelty(
    counters: np.ndarray,
    runs: np.ndarray,
    keys: np.ndarray,
    counts: np.ndarray,
    hashes: np.ndarray,
    table: np.ndarray,
    scratch: np.ndarray,
    order: int,
) -> float:  # pragma: no cover
    known = 0
    count = 0
    for k in range(counters[_RUNS] + 1):
        _key(scratch, counters, runs, k)
        entry, _ = _find(scratch, _hash(scratch), keys, hashes, table)
        if entry == _NONE:
            break
        known += 1
        count = counts[entry]
    orders = order + 1
    if known == orders:
        return 0.0
    if known == 0:
        return 1.0
    familiarity = known + 1.0 - 1.0 / (1 + count)
    return _PARTIAL * (1.0 - familiarity / orders)


@compiled
def _learn(
    counters: np.ndarray,
    runs: np.ndarray,
    keys: np.ndarray,
    counts: np.ndarray,
    hashes: np.ndarray,
    links: np.ndarray,
    free: np.ndarray,
    table: np.ndarray,
    scratch: np.ndarray,
    capacity: int,
) -> None:  # pragma: no cover
    """Counts every pair of the current event as seen once more, now; forgets the least
    recently seen beyond `capacity`."""
    for k in range(counters[_RUNS] + 1):
        _key(scratch, counters, runs, k)
        _add(scratch, 1, keys, counts, hashes, links, free, table, counters)
    while counters[_SIZE] > capacity:
        _evict(counters[_HEAD], keys, hashes, links, free, table, counters)


@compiled
def _add(
    key: np.ndarray,
    count: int,
    keys: np.ndarray,
    counts: np.ndarray,
    hashes: np.ndarray,
    links: np.ndarray,
    free: np.ndarray,
    table: np.ndarray,
    counters: np.ndarray,
) -> None:  # pragma: no cover
    """Adds `count` to the pair `key` and makes it the most recently seen."""
    hashed = _hash(key)
    entry, slot = _find(key, hashed, keys, hashes, table)
    if entry != _NONE:
        counts[entry] += count
        if counters[_TAIL] != entry:
            _unlink(entry, links, counters)
            _link(entry, links, counters)
        return
    entry = free[len(counts) - counters[_SIZE] - 1]
    counters[_SIZE] += 1
    keys[entry] = key
    counts[entry] = count
    hashes[entry] = hashed
    table[slot] = entry
    _link(entry, links, counters)


@compiled
def _hash(key: np.ndarray) -> int:  # pragma: no cover
    hashed = 1469598103934665603
    for v in key:
        hashed = (hashed ^ (v & 0xFFFFFFFF)) * 1099511628211
    return hashed ^ (hashed >> 29)


@compiled
def _find(
    key: np.ndarray, hashed: int, keys: np.ndarray, hashes: np.ndarray, table: np.ndarray
) -> tuple[int, int]:  # pragma: no cover
    """The entry of `key` and its slot; (_NONE, the free slot it would take) when absent."""
    mask = len(table) - 1
    slot = hashed & mask
    width = len(key)
    while True:
        entry = table[slot]
        if entry == _NONE:
            return _NONE, slot
        if hashes[entry] == hashed:
            same = True
            for j in range(width):
                if keys[entry, j] != key[j]:
                    same = False
                    break
            if same:
                return entry, slot
        slot = (slot + 1) & mask


@compiled
def _link(entry: int, links: np.ndarray, counters: np.ndarray) -> None:
    """Appends `entry` to the list (the most recently seen)."""
    tail = counters[_TAIL]  # pragma: no cover
    links[0, entry] = tail
    links[1, entry] = _NONE
    if tail == _NONE:
        counters[_HEAD] = entry
    else:
        links[1, tail] = entry
    counters[_TAIL] = entry


@compiled
def _unlink(entry: int, links: np.ndarray, counters: np.ndarray) -> None:
    before, after = links[0, entry], links[1, entry]  # pragma: no cover
    if before == _NONE:
        counters[_HEAD] = after
    else:
        links[1, before] = after
    if after == _NONE:
        counters[_TAIL] = before
    else:
        links[0, after] = before


@compiled
def _evict(
    entry: int,
    keys: np.ndarray,
    hashes: np.ndarray,
    links: np.ndarray,
    free: np.ndarray,
    table: np.ndarray,
    counters: np.ndarray,
) -> None:  # pragma: no cover
    """Forgets a pair: off the list, out of the table (the probe runs after it shift back)."""
    _unlink(entry, links, counters)
    mask = len(table) - 1
    slot = hashes[entry] & mask
    while table[slot] != entry:
        slot = (slot + 1) & mask
    probe = slot
    while True:
        probe = (probe + 1) & mask
        moving = table[probe]
        if moving == _NONE:
            break
        home = hashes[moving] & mask
        stays = (slot < home <= probe) if slot <= probe else (slot < home or home <= probe)
        if not stays:
            table[slot] = moving
            slot = probe
    table[slot] = _NONE
    counters[_SIZE] -= 1
    free[len(hashes) - counters[_SIZE] - 1] = entry


@compiled
def _rehash(
    table: np.ndarray, hashes: np.ndarray, links: np.ndarray, counters: np.ndarray
) -> None:  # pragma: no cover
    mask = len(table) - 1
    entry = counters[_HEAD]
    while entry != _NONE:
        slot = hashes[entry] & mask
        while table[slot] != _NONE:
            slot = (slot + 1) & mask
        table[slot] = entry
        entry = links[1, entry]


@compiled
def _in_order(
    keys: np.ndarray,
    counts: np.ndarray,
    links: np.ndarray,
    counters: np.ndarray,
    keys_out: np.ndarray,
    counts_out: np.ndarray,
) -> None:  # pragma: no cover
    """The pairs and their counts, least recently seen first."""
    entry = counters[_HEAD]
    row = 0
    while entry != _NONE:
        keys_out[row] = keys[entry]
        counts_out[row] = counts[entry]
        row += 1
        entry = links[1, entry]


@compiled
def _load(
    saved: np.ndarray,
    saved_counts: np.ndarray,
    keys: np.ndarray,
    counts: np.ndarray,
    hashes: np.ndarray,
    links: np.ndarray,
    free: np.ndarray,
    table: np.ndarray,
    counters: np.ndarray,
) -> None:  # pragma: no cover
    """Fills empty memory with saved pairs, least recently seen first (a pair saved twice
    keeps its first place and its last count, as a dictionary does)."""
    for row in range(len(saved_counts)):
        key = saved[row]
        entry, _ = _find(key, _hash(key), keys, hashes, table)
        if entry != _NONE:
            counts[entry] = saved_counts[row]
        else:
            _add(key, saved_counts[row], keys, counts, hashes, links, free, table, counters)


@compiled
def _coarsen(
    scale: FloatArray,
    counters: np.ndarray,
    runs: np.ndarray,
    recent: np.ndarray,
    keys: np.ndarray,
    counts: np.ndarray,
    hashes: np.ndarray,
    links: np.ndarray,
    free: np.ndarray,
    table: np.ndarray,
    levels: int,
) -> None:  # pragma: no cover
    """Doubles the bin width, re-mapping every level (bin k of width w is bin k // 2); pairs
    that become one add up their counts, in the place of the most recently seen."""
    scale[_WIDTH] *= 2.0
    counters[_LEVEL] = _halve(counters[_LEVEL], levels)
    for j in range(counters[_RUNS]):
        runs[j] = _halve(runs[j], levels)
    for j in range(counters[_RECENT]):
        recent[j] = _halve(recent[j], levels)
    size = counters[_SIZE]
    old_keys = np.empty((size, keys.shape[1]), dtype=np.int32)
    old_counts = np.empty(size, dtype=np.int64)
    _in_order(keys, counts, links, counters, old_keys, old_counts)
    table[:] = _NONE
    for j in range(len(free)):
        free[j] = len(free) - 1 - j
    counters[_SIZE] = 0
    counters[_HEAD] = counters[_TAIL] = _NONE
    for row in range(size):
        key = old_keys[row]
        for j in range(len(key) - 1):
            if key[j + 1] == _PAD:
                break  # key[j] is how the value reached its level, not a level
            key[j] = _halve(key[j], levels)
        _add(key, old_counts[row], keys, counts, hashes, links, free, table, counters)


@compiled
def _bulk_span(recent: np.ndarray, counters: np.ndarray, levels: int) -> float:
    """Widths spanned by the middle 90% of the recent values (spikes aside)."""
    ordered = np.sort(recent[: counters[_RECENT]])  # pragma: no cover
    cut = len(ordered) // 20
    return _edge(ordered[-1 - cut], levels) - _edge(ordered[cut], levels)


@compiled
def _quantise(x: float, levels: int) -> int:
    """The level of `x` widths from the origin: unit bins within `levels` of it, beyond that
    `levels / 2` bins per doubling of the distance (a heavy tail, a far spike: a few levels,
    not hundreds), mirrored below the origin."""
    if x >= 0.0:  # pragma: no cover
        return _outward(x, levels)
    return -1 - _outward(-x, levels)


@compiled
def _outward(x: float, levels: int) -> int:
    if x < levels:  # pragma: no cover
        return int(x)
    x = min(x, _FAR)  # inf too
    _, exponent = math.frexp(x / levels)  # x / levels in [2^(e-1), 2^e)
    octave = exponent - 1
    start = levels * 2.0**octave
    within = min(int((x - start) / 2.0 ** (octave + 1)), levels // 2 - 1)
    return levels + octave * (levels // 2) + within


@compiled
def _edge(level: int, levels: int) -> float:
    """The lower edge of `level`'s bin nearest the origin, in widths (the inverse of
    `_quantise` up to the bin)."""
    if level < 0:  # pragma: no cover
        return -_edge_outward(-1 - level, levels)
    return _edge_outward(level, levels)


@compiled
def _edge_outward(level: int, levels: int) -> float:
    half = levels // 2  # pragma: no cover
    if level < levels:
        return float(level)
    octave, within = divmod(level - levels, half)
    return levels * 2.0**octave + within * 2.0 ** (octave + 1)


@compiled
def _halve(level: int, levels: int) -> int:
    """The level of the same values once the width doubles."""
    if level < 0:  # pragma: no cover
        return -1 - _halve_outward(-1 - level, levels)
    return _halve_outward(level, levels)


@compiled
def _halve_outward(level: int, levels: int) -> int:
    half = levels // 2  # pragma: no cover
    if level < levels:
        return level // 2
    if level < levels + half:
        return level - levels + half
    return level - half
