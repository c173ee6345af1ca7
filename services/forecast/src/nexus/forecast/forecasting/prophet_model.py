"""Prophet, fitted per series on its timestamps (ADR 0043).

Prophet's trend (changepoints), its calendar seasonalities (yearly, weekly, daily: on where the
series spans two of them), holidays (countries' calendars by code, from the `holidays` package
Prophet uses, and events of the caller's: name, dates, a window of days around each), and the
series' exogenous columns as extra regressors. Intervals come from one draw of
UNCERTAINTY_SAMPLES predictive samples (trend and noise) with a fixed seed, their quantiles per
level: the same series and options give the same forecast.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting.predicting import Forecast

logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)  # "Importing plotly failed"
from prophet import Prophet  # noqa: E402  # after the logger above is quiet
from prophet.make_holidays import make_holidays_df  # noqa: E402

_stan = logging.getLogger("cmdstanpy")  # cmdstanpy sets INFO and its own handler unless one is set:
_stan.addHandler(logging.NullHandler())  # two lines per fit otherwise; warnings still propagate
_stan.setLevel(logging.WARNING)
UNCERTAINTY_SAMPLES = 300
_SAMPLING = threading.Lock()
SEED = 0
MODES = ("additive", "multiplicative")
MAX_CHANGEPOINTS = 200
MAX_EVENTS = 20
MAX_EVENT_DATES = 1000
MAX_WINDOW = 60
"""Days an event's window reaches before or after each date."""


@dataclass(frozen=True)
class Event:
    """A custom holiday: its dates and the days around each that it affects."""

    name: str
    dates: tuple[pd.Timestamp, ...]
    lower_window: int = 0
    """Days before each date (0 or negative, as Prophet counts)."""
    upper_window: int = 0
    """Days after each date."""


@dataclass(frozen=True)
class ProphetOptions:
    """How Prophet is fitted."""

    countries: tuple[str, ...] = ()
    """Country codes ("US", "DE") whose public holidays are effects."""
    events: tuple[Event, ...] = ()
    changepoint_prior_scale: float = 0.05
    """Trend flexibility: larger follows more changes."""
    n_changepoints: int = 25
    changepoints: tuple[pd.Timestamp, ...] = ()
    """Explicit trend changepoints (instead of n_changepoints potential ones); those outside a
    fit's history are left out of that fit."""
    seasonality_mode: Literal["additive", "multiplicative"] = "additive"
    regressors: bool = True
    """Whether the series' exogenous columns are extra regressors."""


def check(options: ProphetOptions, where: str = "prophet") -> None:
    """Refuses options Prophet cannot fit with, naming the field.

    Raises:
        InvalidArgument: An unknown country, a bad mode, scale or count, an event without a
            name or dates, or a window out of range.
    """
    for i, code in enumerate(options.countries):
        if not _known_country(code):
            raise InvalidArgument.for_field(f"{where}.countries[{i}]", f"unknown country {code!r}")
    if options.seasonality_mode not in MODES:
        raise InvalidArgument.for_field(
            f"{where}.seasonality_mode", f"{options.seasonality_mode!r}; one of {', '.join(MODES)}"
        )
    if not 0 < options.changepoint_prior_scale <= 100:  # NaN fails too
        raise InvalidArgument.for_field(
            f"{where}.changepoint_prior_scale", f"{options.changepoint_prior_scale} not in (0, 100]"
        )
    if not 0 <= options.n_changepoints <= MAX_CHANGEPOINTS:
        raise InvalidArgument.for_field(
            f"{where}.n_changepoints", f"{options.n_changepoints} not in [0, {MAX_CHANGEPOINTS}]"
        )
    if len(options.changepoints) > MAX_CHANGEPOINTS:
        raise InvalidArgument.for_field(
            f"{where}.changepoints", f"{len(options.changepoints)}; at most {MAX_CHANGEPOINTS}"
        )
    _check_events(options.events, f"{where}.events")


def _known_country(code: str) -> bool:
    import holidays

    return bool(code) and code.isalpha() and code.isupper() and hasattr(holidays, code)


def _check_events(events: Sequence[Event], where: str) -> None:
    if len(events) > MAX_EVENTS:
        raise InvalidArgument.for_field(where, f"{len(events)} events; at most {MAX_EVENTS}")
    names = [e.name for e in events]
    for i, event in enumerate(events):
        if not event.name or event.name in names[:i]:
            raise InvalidArgument.for_field(f"{where}[{i}].name", "required and unique")
        if not event.dates or len(event.dates) > MAX_EVENT_DATES:
            raise InvalidArgument.for_field(
                f"{where}[{i}].dates", f"1 to {MAX_EVENT_DATES} dates, {len(event.dates)} given"
            )
        if not (-MAX_WINDOW <= event.lower_window <= 0 <= event.upper_window <= MAX_WINDOW):
            raise InvalidArgument.for_field(
                f"{where}[{i}]",
                f"lower_window in [-{MAX_WINDOW}, 0] and upper_window in [0, {MAX_WINDOW}]",
            )


@dataclass
class FittedProphet:
    """A fitted Prophet with what forecasting from it needs."""

    model: Any
    frequency: str
    regressors: int
    """How many exogenous columns it was fitted with (x0, x1, ...)."""

    def predict(
        self, horizon: int, levels: Sequence[float], x_future: np.ndarray | None
    ) -> Forecast:
        """The next `horizon` steps (blocking)."""
        last = self.model.history["ds"].iloc[-1]
        future = pd.DataFrame(
            {"ds": pd.date_range(last, periods=horizon + 1, freq=self.frequency)[1:]}
        )
        return _predict(self.model, _with_regressors(future, x_future, self.regressors), levels)


def fit(
    dates: pd.DatetimeIndex, y: np.ndarray, x: np.ndarray | None, options: ProphetOptions, freq: str
) -> FittedProphet:
    """Prophet fitted on the series `y` at `dates` (blocking, CPU); `dates` may reach past the
    series (the horizon): its holidays' years are taken from all of them."""
    uses = x.shape[1] if x is not None and options.regressors else 0
    model = _build(options, dates, uses)
    history = _with_regressors(pd.DataFrame({"ds": dates[: len(y)], "y": y}), x, uses)
    model.fit(history)
    return FittedProphet(model, freq, uses)


def forecast_once(
    dates: pd.DatetimeIndex,
    y: np.ndarray,
    horizon: int,
    levels: Sequence[float],
    x: np.ndarray | None,
    x_future: np.ndarray | None,
    options: ProphetOptions,
) -> Forecast:
    """Fits on `y` (at the first len(y) of `dates`) and forecasts the next `horizon` dates."""
    fitted = fit(dates, y, x if x_future is not None else None, options, "")
    future = pd.DataFrame({"ds": dates[len(y) : len(y) + horizon]})
    return _predict(fitted.model, _with_regressors(future, x_future, fitted.regressors), levels)


def _build(options: ProphetOptions, dates: pd.DatetimeIndex, regressors: int) -> Any:
    changepoints = _changepoints(options.changepoints, dates)
    model = Prophet(
        changepoints=changepoints or None,
        n_changepoints=options.n_changepoints,
        changepoint_prior_scale=options.changepoint_prior_scale,
        seasonality_mode=options.seasonality_mode,
        holidays=_holidays(options, dates),
        uncertainty_samples=UNCERTAINTY_SAMPLES,
    )
    for i in range(regressors):
        model.add_regressor(f"x{i}")
    return model


def _changepoints(given: Sequence[pd.Timestamp], dates: pd.DatetimeIndex) -> list[pd.Timestamp]:
    """The explicit changepoints strictly inside the history (Prophet refuses others)."""
    first, last = dates[0], dates[-1]
    return [t for t in given if first < t < last]


def _holidays(options: ProphetOptions, dates: pd.DatetimeIndex) -> pd.DataFrame | None:
    years = list(range(dates[0].year, dates[-1].year + 2))
    frames = [make_holidays_df(years, code) for code in options.countries]
    for event in options.events:
        frames.append(
            pd.DataFrame(
                {
                    "ds": pd.to_datetime(list(event.dates)),
                    "holiday": event.name,
                    "lower_window": event.lower_window,
                    "upper_window": event.upper_window,
                }
            )
        )
    if not frames:
        return None
    found = pd.concat(frames, ignore_index=True)
    for column in ("lower_window", "upper_window"):
        if column not in found:
            found[column] = 0
        found[column] = found[column].fillna(0).astype(int)
    return found


def _with_regressors(frame: pd.DataFrame, x: np.ndarray | None, count: int) -> pd.DataFrame:
    if not count or x is None:
        return frame
    return frame.assign(**{f"x{i}": x[: len(frame), i] for i in range(count)})


def _predict(model: Any, future: pd.DataFrame, levels: Sequence[float]) -> Forecast:
    samples_n, model.uncertainty_samples = model.uncertainty_samples, 0  # the mean: no sampling
    try:
        mean = model.predict(future)["yhat"].to_numpy(np.float64)
    finally:
        model.uncertainty_samples = samples_n
    if not levels:
        return Forecast(mean)
    with _SAMPLING:  # Prophet samples from numpy's global generator: one draw at a time
        state = np.random.get_state()
        try:
            np.random.seed(SEED)
            samples = model.predictive_samples(future)["yhat"]
        finally:
            np.random.set_state(state)
    intervals = {
        level: (
            np.quantile(samples, (1 - level / 100) / 2, axis=1),
            np.quantile(samples, (1 + level / 100) / 2, axis=1),
        )
        for level in levels
    }
    return Forecast(mean, intervals)
