"""The contract of a streaming (online) detector, and the per-source wrapper around it.

An `OnlineDetector` follows one univariate series: `update(value)` returns the anomaly likelihood
of `value` in [0, 1] given everything before it, then learns from it. It needs no training step;
while it is still learning (its learning period) it returns 0. Its whole state is a `State`: a
flat mapping of names to numpy arrays (scalars as 0-d arrays), so it can be saved (`encode_state`,
npz without pickle) and resumed elsewhere with the same results as if it had never stopped.

A `SourceDetector` follows one source's points (one or more values each): one `OnlineDetector` per
value, the point's likelihood is the largest of them, and it is flagged when it reaches the
source's threshold, unless a flag was raised within the last `suppress` points (one event, one
flag).
"""

from __future__ import annotations

import io
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from nexus.anomaly.detectors._params import ParamSpec, parse_params
from nexus.anomaly.detectors._types import FloatArray, Params, ParamValue
from nexus.anomaly.detectors.online._periods import dominant_periods
from nexus.common.errors import InvalidArgument

VALUE_LIMIT = 1e150
"""Values are judged and learnt within this magnitude (a larger one as the limit: still the most
extreme value a detector has seen), so that squares and sums over a window stay finite for any
finite input."""

Searches = tuple[np.ndarray, list[np.ndarray]]
"""Period searches a detector makes over a series: after which values (indexes), and the
window each one looks at."""
Periods = tuple[np.ndarray, np.ndarray]
"""The searches' results: after which values, and the period each found."""

State = dict[str, np.ndarray]
"""A detector's whole state: names to arrays (scalars as 0-d arrays)."""

MAX_STATE_BYTES = 1 << 20
"""The most bytes one source's encoded state may take (a JetStream KV value stays well below
NATS's default 1 MiB payload limit; checked when decoding too)."""

NAME_ROOM = 64
"""The longest name an array of a state is saved under (a source's state prefixes each value's
names: `detector.<index>.<member>/<name>`)."""
ARRAY_OVERHEAD = 232 + 2 * NAME_ROOM
"""Bytes an array takes in an encoded state beyond its data: its zip entry (local header, zip64
extra, central directory record, the name twice) and its npy header."""
ARCHIVE_OVERHEAD = 22
"""Bytes an encoded state takes beyond its arrays (the end of the central directory)."""


def state_bytes(*data_bytes: int) -> int:
    """The most bytes arrays holding `data_bytes` of data each take in an encoded state."""
    return sum(data_bytes) + ARRAY_OVERHEAD * len(data_bytes)


class OnlineDetector(ABC):
    """One univariate series' detector; see the module docstring.

    Subclasses declare `KIND` (the name users select it by), `DESCRIPTION`, `PARAMS` and
    `DEFAULT_THRESHOLD`, and implement `update`, `get_state`, `set_state` and `state_bound`.

    Args:
        params: The kind's parameters (text or numbers).
        field: The request field they came in (errors name `<field>.<parameter>`).
        state_budget: The most bytes the encoded state may ever take (`state_bytes` of its
            arrays). A kind whose memory can shrink (the context detector) fits itself into it;
            a kind whose state has a fixed size checks that it fits. None: MAX_STATE_BYTES, and
            parameters whose state could not fit it are refused.

    Raises:
        InvalidArgument: An unknown parameter or a value out of range, or a state that cannot
            fit its budget (see `smallest_state`, which a caller sharing a budget checks first).
    """

    KIND: ClassVar[str]
    DESCRIPTION: ClassVar[str]
    PARAMS: ClassVar[tuple[ParamSpec, ...]] = ()
    DEFAULT_THRESHOLD: ClassVar[float] = 0.999
    """The threshold a source gets unless it sets one: where this kind's likelihood means "rare"
    (each kind's scale differs; bench/anomaly_nab.py shows each at its own)."""

    def __init__(
        self,
        params: Params | None = None,
        *,
        field: str = "params",
        state_budget: int | None = None,
    ) -> None:
        self.params: dict[str, ParamValue] = parse_params(self.PARAMS, params, field=field)
        self.state_budget = MAX_STATE_BYTES if state_budget is None else state_budget

    @abstractmethod
    def update(self, value: float) -> float:
        """The anomaly likelihood of `value` (finite) in [0, 1], before learning from it."""

    def update_many(self, values: FloatArray, periods: Periods | None = None) -> FloatArray:
        """The likelihoods of `values` in order, each as `update` gives it (a kind whose state
        steps faster through a series at once overrides this). `periods`: what the searches
        of `period_searches(values)` found, when the caller made them."""
        return np.array([self.update(value) for value in values.tolist()], dtype=np.float64)

    def period_searches(self, values: FloatArray) -> Searches:
        """The period searches `update_many(values)` makes (a source's detectors make theirs
        together: `SourceDetector`); this kind makes none."""
        return _NO_SEARCHES

    @abstractmethod
    def state_bound(self) -> int:
        """The most bytes this detector's state can take encoded (within `state_budget`)."""

    def smallest_state(self) -> int:
        """The least `state_bound` that any budget leaves this kind with these parameters (a
        kind whose state has a fixed size: that size)."""
        return self.state_bound()

    def _check_budget(self, field: str) -> None:
        """Raises when the state, at its largest, cannot fit `state_budget`.

        Raises:
            InvalidArgument: Naming `field` (the parameter that sizes the state).
        """
        bound = self.state_bound()
        if bound > self.state_budget:
            raise InvalidArgument.for_field(
                field,
                f"the {self.KIND} detector's state could reach {bound} bytes, over the"
                f" {self.state_budget} it may take",
            )

    @abstractmethod
    def get_state(self) -> State:
        """Everything `set_state` needs to resume (copies, not views of live buffers)."""

    @abstractmethod
    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Resumes from `get_state`'s output.

        Raises:
            ValueError: A state this detector (with its parameters) cannot resume from.
        """


@dataclass(frozen=True)
class OnlineVerdict:
    """What a source's detector says of one point.

    Attributes:
        likelihood: The point's anomaly likelihood in [0, 1] (the largest over its values).
        is_anomaly: `likelihood` reached the threshold and no flag was raised in the last
            `suppress` points.
        feature: The value (index) with the largest likelihood.
    """

    likelihood: float
    is_anomaly: bool
    feature: int


def encode_state(state: Mapping[str, np.ndarray]) -> bytes:
    """`state` as bytes (numpy's npz, no pickled objects; uncompressed: floats barely compress,
    and a source's state is saved after every batch)."""
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in state.items()}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def decode_state(data: bytes) -> State:
    """The state `encode_state` wrote.

    Raises:
        ValueError: Not such a state, too large, or holding objects.
    """
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"state of {len(data)} bytes is over {MAX_STATE_BYTES}")
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def check_threshold(threshold: float, field: str = "threshold") -> float:
    """A likelihood threshold: a number in (0, 1]."""
    if not (isinstance(threshold, int | float) and math.isfinite(threshold)):
        raise InvalidArgument.for_field(field, f"must be a number in (0, 1], got {threshold!r}")
    if not 0.0 < threshold <= 1.0:
        raise InvalidArgument.for_field(field, f"must be in (0, 1], got {threshold}")
    return float(threshold)


class SourceDetector:
    """One source's detector: an `OnlineDetector` of `kind` per value of its points.

    Args:
        make: Builds one value's detector (a fresh one; all with the same parameters), given
            the keyword `state_budget`.
        threshold: A point is flagged when its likelihood reaches this, in (0, 1].
        suppress: After a flag, points that cannot be flagged again (>= 0).
        state_budget: The most bytes `get_state`'s output may take encoded (None:
            MAX_STATE_BYTES). Each value's detector gets an equal share of it once the width is
            known, so the whole state fits whatever the width; a width past `max_width` (even
            the smallest state per value would not fit) is refused.

    A point of another width than the stream's restarts the detectors (a source that gained a
    metric keeps flowing, learning anew). Values beyond +-VALUE_LIMIT reach the detectors as the
    limit.
    """

    def __init__(
        self,
        make: Callable[..., OnlineDetector],
        threshold: float,
        suppress: int,
        state_budget: int | None = None,
    ) -> None:
        self._make = make
        self._detectors: list[OnlineDetector] = []
        self.threshold, self.suppress = _flagging(threshold, suppress)
        self._since_flag = self.suppress  # points since the last flag, capped at `suppress`
        self.state_budget = MAX_STATE_BYTES if state_budget is None else state_budget
        self._max_width: int | None = None

    @property
    def max_width(self) -> int:
        """The most values a point may have: their detectors' states, each at its smallest,
        fit `state_budget` (0: not even one does)."""
        if self._max_width is None:
            smallest = self._make(state_budget=MAX_STATE_BYTES).smallest_state()
            self._max_width = max(self._room() // max(smallest, 1), 0)
        return self._max_width

    def _room(self) -> int:
        """The budget's bytes left for the values' detectors (after this detector's own)."""
        return self.state_budget - _OWN_STATE

    def _build(self, width: int) -> list[OnlineDetector]:
        """Fresh detectors for points of `width` values, each with its share of the budget.

        Raises:
            InvalidArgument: `width` is over `max_width` (names `values`).
        """
        if width > self.max_width:
            raise InvalidArgument.for_field(
                "values",
                f"has {width} values; this source's streaming detector keeps a state that can be"
                f" saved ({self.state_budget} bytes) for at most {self.max_width} values per point",
            )
        share = self._room() // width
        return [self._make(state_budget=share) for _ in range(width)]

    def retune(self, threshold: float, suppress: int) -> None:
        """Flags from now on at `threshold` with `suppress`, keeping what was learnt.

        Raises:
            InvalidArgument: A threshold outside (0, 1] or a negative suppress.
        """
        self.threshold, self.suppress = _flagging(threshold, suppress)
        self._since_flag = min(self._since_flag, self.suppress)

    def update(self, point: Sequence[float] | FloatArray) -> OnlineVerdict:
        """Scores a (validated: non-empty, finite, at most `max_width` values) point, then
        learns from it."""
        return self.update_many([point])[0]

    def update_many(
        self, points: Sequence[Sequence[float] | FloatArray] | FloatArray
    ) -> list[OnlineVerdict]:
        """The verdicts of (validated) points in order, as `update` gives them one at a time:
        each value's detector steps through its values of a run of points of one width at
        once."""
        verdicts: list[OnlineVerdict] = []
        start = 0
        while start < len(points):
            width = len(points[start])
            stop = start + 1
            while stop < len(points) and len(points[stop]) == width:
                stop += 1
            verdicts += self._update_rows(np.array(points[start:stop], dtype=np.float64))
            start = stop
        return verdicts

    def _update_rows(self, rows: FloatArray) -> list[OnlineVerdict]:
        """The verdicts of points of one width (a matrix, a point per row)."""
        if rows.shape[1] != len(self._detectors):
            self._detectors = self._build(rows.shape[1])
        rows = np.clip(rows, -VALUE_LIMIT, VALUE_LIMIT)
        columns = [np.ascontiguousarray(column) for column in rows.T]
        periods = _search_periods(self._detectors, columns)
        scores = np.empty_like(rows)
        for index, (detector, column) in enumerate(zip(self._detectors, columns, strict=True)):
            scores[:, index] = detector.update_many(column, periods[index])
        features = scores.argmax(axis=1)  # the first of the largest, as a running maximum
        likelihoods = scores[np.arange(len(rows)), features]
        verdicts = []
        threshold, suppress, since_flag = self.threshold, self.suppress, self._since_flag
        for likelihood, feature in zip(likelihoods.tolist(), features.tolist(), strict=True):
            flagged = likelihood >= threshold and since_flag >= suppress
            since_flag = 0 if flagged else min(since_flag + 1, suppress)
            verdicts.append(OnlineVerdict(likelihood, flagged, feature))
        self._since_flag = since_flag
        return verdicts

    def get_state(self) -> State:
        """The whole state: each value's detector's, under `<index>.`, and the suppression."""
        state: State = {
            "since_flag": np.asarray(self._since_flag),
            "width": np.asarray(len(self._detectors)),
        }
        for index, detector in enumerate(self._detectors):
            state.update({f"{index}.{k}": v for k, v in detector.get_state().items()})
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Resumes from `get_state`'s output.

        Raises:
            ValueError: A state these detectors cannot resume from.
        """
        try:
            width = int(state["width"])
            since_flag = int(state["since_flag"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a source detector's state: {err}") from None
        try:
            detectors = self._build(width)
        except InvalidArgument as err:
            raise ValueError(f"a state of {width} values cannot fit: {err}") from None
        for index, detector in enumerate(detectors):
            prefix = f"{index}."
            detector.set_state(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        self._detectors = detectors
        self._since_flag = min(max(since_flag, 0), self.suppress)


_OWN_STATE = state_bytes(8, 8) + ARCHIVE_OVERHEAD
"""What a `SourceDetector`'s encoded state holds beside its detectors' states (`since_flag`,
`width`, the archive's end)."""


_NO_SEARCHES: Searches = (np.zeros(0, dtype=np.int64), [])


def _search_periods(
    detectors: Sequence[OnlineDetector], columns: Sequence[FloatArray]
) -> list[Periods]:
    """Every detector's period searches over its column, made together."""
    searches = [d.period_searches(c) for d, c in zip(detectors, columns, strict=True)]
    found = dominant_periods([window for _, windows in searches for window in windows])
    periods, start = [], 0
    for due, windows in searches:
        periods.append((due, found[start : start + len(windows)]))
        start += len(windows)
    return periods


def _flagging(threshold: float, suppress: int) -> tuple[float, int]:
    """A checked threshold and suppress count."""
    if isinstance(suppress, bool) or int(suppress) != suppress or suppress < 0:
        raise InvalidArgument.for_field("suppress", f"must be an integer >= 0, got {suppress}")
    return check_threshold(threshold), int(suppress)
