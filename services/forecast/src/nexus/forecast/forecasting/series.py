"""Series as given, and as the models get them: on a regular grid, missing values filled.

The policy for missing data (ADR 0031): timestamps must be strictly increasing and lie on one
frequency's grid (given, or inferred); a step of the grid with no timestamp is a missing value,
as is NaN. Leading missing values are dropped; a run of at most `max_missing_run` missing values
inside the series is filled by linear interpolation; a longer run, or a missing last value, is
refused (INVALID_ARGUMENT naming the field and where). Exogenous columns follow the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nexus.common.errors import InvalidArgument

MIN_TIMESTAMPS_TO_INFER = 3
FloatArray = np.ndarray


@dataclass(frozen=True)
class Series:
    """One series as given: timestamps, values (NaN = missing), optional exogenous columns."""

    id: str
    timestamps: pd.DatetimeIndex
    values: FloatArray
    exogenous: Mapping[str, FloatArray] = field(default_factory=dict)
    future: Mapping[str, FloatArray] = field(default_factory=dict)
    """Exogenous values over the horizon."""
    field: str = "series"
    """Where the series came from in the request, for error messages."""


@dataclass(frozen=True)
class SeriesOptions:
    """How series are read."""

    frequency: str = ""
    season_length: int = 0
    extra_seasonalities: tuple[int, ...] = ()
    max_missing_run: int = 0


@dataclass(frozen=True)
class Prepared:
    """A series ready for the models: regular, gap-free, with its frequency and seasons."""

    id: str
    y: FloatArray
    start: pd.Timestamp
    frequency: str
    seasons: tuple[int, ...]
    """The season length first, then any further seasonalities (MSTL)."""
    exogenous: tuple[str, ...] = ()
    x: FloatArray | None = None
    future: Mapping[str, FloatArray] = field(default_factory=dict)
    filled: int = 0
    field: str = "series"

    @property
    def season(self) -> int:
        """The main season length in steps."""
        return self.seasons[0]

    @property
    def last(self) -> pd.Timestamp:
        """The last timestamp."""
        return self.grid(len(self.y))[-1]

    def grid(self, periods: int) -> pd.DatetimeIndex:
        """The first `periods` timestamps of the series' grid."""
        return pd.date_range(self.start, periods=periods, freq=self.frequency)

    def horizon_index(self, horizon: int) -> pd.DatetimeIndex:
        """The timestamps of the next `horizon` steps."""
        return pd.date_range(self.last, periods=horizon + 1, freq=self.frequency)[1:]


def prepare(series: Series, options: SeriesOptions, max_missing_run: int) -> Prepared:
    """Checks a series and puts it on its grid, missing values filled by the stated policy.

    Raises:
        InvalidArgument: Lengths that differ, timestamps out of order or off every grid, an
            unknown frequency, a run of missing values longer than allowed, a missing last value.
    """
    where = series.field
    _check_lengths(series)
    index = _check_order(series.timestamps, f"{where}.timestamps")
    frequency = options.frequency or infer_frequency(index, f"{where}.timestamps")
    grid = _grid(index, frequency, f"{where}.timestamps")
    limit = options.max_missing_run or max_missing_run
    values = _on_grid(series.values, index, grid)
    first = _first_observed(values, f"{where}.values")
    y, filled = fill_missing(values[first:], limit, f"{where}.values")
    names = tuple(sorted(series.exogenous))
    x = _exogenous(series, index, grid, first, limit) if names else None
    return Prepared(
        id=series.id,
        y=y,
        start=grid[first],
        frequency=frequency,
        seasons=_seasons(options, frequency),
        exogenous=names,
        x=x,
        future=dict(series.future),
        filled=filled,
        field=where,
    )


def _check_lengths(series: Series) -> None:
    n = len(series.timestamps)
    if len(series.values) != n:
        raise InvalidArgument.for_field(
            f"{series.field}.values", f"{len(series.values)} values for {n} timestamps"
        )
    for name, column in series.exogenous.items():
        if len(column) != n:
            raise InvalidArgument.for_field(
                f"{series.field}.exogenous", f"column {name!r} has {len(column)} values for {n}"
            )
    if n == 0:
        raise InvalidArgument.for_field(f"{series.field}.values", "is empty")


def _check_order(index: pd.DatetimeIndex, where: str) -> pd.DatetimeIndex:
    steps = np.diff(index.asi8)
    if len(steps) and (bad := np.flatnonzero(steps <= 0)).size:
        i = int(bad[0]) + 1
        raise InvalidArgument.for_field(
            f"{where}[{i}]", f"{index[i]} is not after the timestamp before it ({index[i - 1]})"
        )
    return index


def infer_frequency(index: pd.DatetimeIndex, where: str) -> str:
    """The frequency of regular timestamps, missing steps allowed (a pandas alias): the most
    common step between timestamps, on the calendar for months, quarters and years. Whether
    every timestamp lies on its grid is checked when the series is put on it.

    Raises:
        InvalidArgument: Too few timestamps to tell.
    """
    if len(index) < MIN_TIMESTAMPS_TO_INFER:
        raise InvalidArgument.for_field(
            where, f"{len(index)} timestamps; give options.frequency to read so few"
        )
    exact = pd.infer_freq(index)
    if exact:
        return str(exact)
    found = _candidates(index)
    return next((c for c in found if _off_grid(index, c) is None), found[0])


def _candidates(index: pd.DatetimeIndex) -> list[str]:
    steps, counts = np.unique(np.diff(index.asi8), return_counts=True)
    step = pd.Timedelta(int(steps[np.argmax(counts)]))
    days = step / pd.Timedelta(days=1)
    if 28 <= days <= 31:
        return ["MS", "ME"]
    if 89 <= days <= 92:
        return ["QS", "QE"]
    if 365 <= days <= 366:
        return ["YS", "YE"]
    return [str(pd.tseries.frequencies.to_offset(step).freqstr)]


def _grid(index: pd.DatetimeIndex, frequency: str, where: str) -> pd.DatetimeIndex:
    try:
        pd.tseries.frequencies.to_offset(frequency)
    except ValueError as err:
        raise InvalidArgument.for_field("options.frequency", f"unknown: {frequency!r}") from err
    grid = pd.date_range(index[0], index[-1], freq=frequency)
    bad = _off_grid(index, frequency, grid)
    if bad is not None:
        raise InvalidArgument.for_field(
            f"{where}[{bad}]",
            f"timestamps are irregular: {index[bad]} is not on the {frequency} grid from "
            f"{index[0]}",
        )
    return grid


def _off_grid(
    index: pd.DatetimeIndex, frequency: str, grid: pd.DatetimeIndex | None = None
) -> int | None:
    """The position of the first timestamp off the grid that starts at the first one."""
    if grid is None:
        grid = pd.date_range(index[0], index[-1], freq=frequency)
    if len(grid) == 0 or grid[0] != index[0]:
        return 0
    if len(grid) == len(index) and (grid.asi8 == index.asi8).all():
        return None  # every step given: the usual case, without a set lookup
    inside = index.isin(grid)
    return None if inside.all() else int(np.flatnonzero(~inside)[0])


def _on_grid(values: FloatArray, index: pd.DatetimeIndex, grid: pd.DatetimeIndex) -> FloatArray:
    """Values at the grid's steps, NaN where no timestamp was given (the timestamps lie on it)."""
    if len(index) == len(grid):  # on the grid and as many: the same steps
        return np.asarray(values, dtype=np.float64)
    series = pd.Series(values, index=index).reindex(grid)
    return np.asarray(series, dtype=np.float64)


def _first_observed(values: FloatArray, where: str) -> int:
    observed = np.flatnonzero(~np.isnan(values))
    if observed.size == 0:
        raise InvalidArgument.for_field(where, "has no observed value")
    if np.isnan(values[-1]):
        raise InvalidArgument.for_field(where, "the last value is missing; forecasts start there")
    return int(observed[0])


def fill_missing(values: FloatArray, limit: int, where: str) -> tuple[FloatArray, int]:
    """Fills runs of at most `limit` missing values by linear interpolation.

    Raises:
        InvalidArgument: A longer run (where it starts and how long it is), or infinities.
    """
    if np.isinf(values).any():
        raise InvalidArgument.for_field(
            where, f"value {int(np.argmax(np.isinf(values)))} is infinite"
        )
    missing = np.isnan(values)
    if not missing.any():
        return values, 0
    start, length = _longest_run(missing)
    if length > limit:
        raise InvalidArgument.for_field(
            where, f"{length} missing values in a row from step {start}; at most {limit} are filled"
        )
    positions = np.arange(len(values))
    filled = values.copy()
    filled[missing] = np.interp(positions[missing], positions[~missing], values[~missing])
    return filled, int(missing.sum())


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.diff(padded)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = ends - starts
    i = int(np.argmax(lengths))
    return int(starts[i]), int(lengths[i])


def _exogenous(
    series: Series, index: pd.DatetimeIndex, grid: pd.DatetimeIndex, first: int, limit: int
) -> FloatArray:
    columns = []
    for name in sorted(series.exogenous):
        where = f"{series.field}.exogenous[{name}]"
        raw = _on_grid(series.exogenous[name], index, grid)
        if np.isnan(raw[first:]).all() or np.isnan(raw[-1]):
            raise InvalidArgument.for_field(where, "needs its last value and at least one other")
        column, _ = fill_missing(raw[first:], limit, where)
        columns.append(column)
    return np.column_stack(columns)


def _seasons(options: SeriesOptions, frequency: str) -> tuple[int, ...]:
    season = options.season_length or default_season(frequency)
    extra = tuple(s for s in options.extra_seasonalities if s > 1 and s != season)
    return (season, *extra)


def default_season(frequency: str) -> int:
    """The usual season of a frequency: a day of sub-daily steps, a week of days, a year of
    weeks, months or quarters; 1 (none) otherwise."""
    offset = pd.tseries.frequencies.to_offset(frequency)
    name = offset.name.upper()
    for prefix, season in (("W", 52), ("M", 12), ("BM", 12), ("Q", 4), ("BQ", 4)):
        if name.startswith(prefix) and offset.n == 1:
            return season
    if name in {"D", "B"} and offset.n == 1:
        return 7 if name == "D" else 5
    try:
        step = pd.Timedelta(offset)
    except ValueError:
        return 1
    per_day = pd.Timedelta(days=1) / step
    return int(per_day) if step < pd.Timedelta(days=1) and per_day == int(per_day) else 1
