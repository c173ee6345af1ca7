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
  value and the state stay bounded whatever the stream.

The learning period's values are kept, and learnt once the range is set; until then it returns 0.
On NAB's part in ../shared/data (bench/anomaly_nab.py) the event novelty and the new-event rate
carry the score; longer contexts change the order of scores below the flagging threshold only.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping

import numpy as np

from nexus.anomaly.detectors._params import ParamSpec, Parser, integer
from nexus.anomaly.detectors._types import Params, ParamValue
from nexus.anomaly.detectors.online._base import MAX_STATE_BYTES, OnlineDetector, State
from nexus.common.errors import InvalidArgument

_RELATIVE_WIDTH_FLOOR = 1e-9
"""The narrowest bin, relative to the learnt values' magnitude (a flat learning period)."""
_ABSOLUTE_WIDTH_FLOOR = 1e-12
_FAR = 2.0**30
"""Values further than this many widths from the origin count as this far (bounded levels)."""
_PAD = np.iinfo(np.int32).min
"""Fills the unused columns of a shorter pair in the saved memory."""
_MOVED, _STAYED = 1, 2
"""An event's second part: the value moved to its level, or stayed at it."""
_PARTIAL = 0.5
"""The most a known event scores when some of its contexts are new."""

Key = tuple[int, ...]


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
            "Most (context, event) pairs remembered; least recently seen evicted first",
        ),
        ParamSpec(
            "rate_memory",
            300,
            integer(1, 100_000),
            "Values the recent rate of new events is averaged over",
        ),
    )

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

    def _keys(self, event: Key) -> list[Key]:
        runs = self._runs
        keys = [event]
        for k in range(1, len(runs) + 1):
            keys.append((*runs[-k:], *event))
        return keys

    def _novelty(self, event: Key) -> float:
        memory = self._memory
        known = 0
        count = 0
        for key in self._keys(event):
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
        for key in self._keys(event):
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
