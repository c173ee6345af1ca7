"""Prophet (ADR 0043) over real fits on simulated daily series: it recovers a trend changepoint
and the effect of a country's holidays and of custom events, it uses an exogenous column as a
regressor, its intervals are reproducible, a fitted set serves it, bad settings are refused
naming the field."""

from __future__ import annotations

import pickle

import holidays
import numpy as np
import pandas as pd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from nexus.api.forecast.v1 import forecast_service_pb2 as pb
from nexus.common.errors import InvalidArgument
from nexus.forecast.converters import fit_spec, prophet_of
from nexus.forecast.forecasting import (
    FittedSet,
    ModelKind,
    Plan,
    Series,
    SeriesOptions,
    backtest,
    fit_series,
    forecast_once,
    prepare,
)
from nexus.forecast.forecasting.prophet_model import Event, ProphetOptions

START = pd.Timestamp("2021-01-04")
DAYS, HORIZON = 3 * 365, 60


def _daily(values: np.ndarray, exogenous: dict[str, np.ndarray] | None = None) -> Series:
    index = pd.date_range(START, periods=len(values), freq="D")
    return Series("p", index, values, exogenous=exogenous or {})


def _forecast(
    y: np.ndarray, options: ProphetOptions, x: np.ndarray | None = None, levels: tuple = ()
) -> np.ndarray:
    dates = pd.date_range(START, periods=DAYS + HORIZON, freq="D")
    x_past = x[:DAYS] if x is not None else None
    x_future = x[DAYS:] if x is not None else None
    found = forecast_once(
        ModelKind.PROPHET, (7,), y[:DAYS], HORIZON, levels, x_past, x_future, dates, options
    )
    return found.mean


def _mae(y: np.ndarray, mean: np.ndarray) -> float:
    return float(np.mean(np.abs(y[DAYS:] - mean)))


def test_prophet_recovers_a_changepoint_and_us_holidays() -> None:
    """Three years of a weekly season whose trend turns from +0.05 to -0.05 a day at day 700,
    minus 15 on every US public holiday. The forecast should follow the falling trend and, told
    of US holidays, dip on them (the horizon holds Labor Day and Columbus Day... of year 4)."""
    rng = np.random.default_rng(0)
    dates = pd.date_range(START, periods=DAYS + HORIZON, freq="D")
    t = np.arange(len(dates))
    trend = 100 + 0.05 * np.minimum(t, 700) - 0.05 * np.maximum(t - 700, 0)
    us = holidays.country_holidays("US", years=range(2021, 2025))
    effect = np.array([-15.0 if d.date() in us else 0.0 for d in dates])
    y = trend + 3 * np.sin(2 * np.pi * t / 7) + effect + rng.normal(0, 1, len(t))

    plain = _forecast(y, ProphetOptions())
    told = _forecast(y, ProphetOptions(countries=("US",)))

    slope = np.polyfit(np.arange(HORIZON), told, 1)[0]
    assert -0.07 < slope < -0.03
    holiday = effect[DAYS:] < 0
    assert holiday.any()
    assert _mae(y, told) < 0.6 * _mae(y, plain)
    assert float(np.mean(told[holiday] - np.mean(told))) < -8


def test_the_automatic_choice_picks_prophet_where_holidays_and_a_trend_made_the_series() -> None:
    """Two years of a weekly season on a rising trend, minus 20 on US holidays; candidates
    seasonal naive, AutoETS and Prophet told of US holidays: Prophet should win the backtest."""
    rng = np.random.default_rng(4)
    dates = pd.date_range(START, periods=730, freq="D")
    us = holidays.country_holidays("US", years=range(2021, 2024))
    effect = np.array([-20.0 if d.date() in us else 0.0 for d in dates])
    t = np.arange(len(dates))
    y = 100 + 0.1 * t + 4 * np.sin(2 * np.pi * t / 7) + effect + rng.normal(0, 1, len(t))
    series = prepare(_daily(y), SeriesOptions(season_length=7), 0)
    plan = Plan(horizon=60, windows=2, prophet=ProphetOptions(countries=("US",)))

    choice = backtest(
        series, (ModelKind.SEASONAL_NAIVE, ModelKind.AUTO_ETS, ModelKind.PROPHET), plan
    )

    assert choice.model is ModelKind.PROPHET
    assert choice.margin_percent > 20


def test_prophet_learns_custom_events_with_their_window() -> None:
    """A promotion every 30 days lifts the day and the next by 20; an event with those dates
    and upper_window 1 should forecast the lift."""
    rng = np.random.default_rng(1)
    dates = pd.date_range(START, periods=DAYS + HORIZON, freq="D")
    promos = dates[10::30]
    lift = np.zeros(len(dates))
    for d in promos:
        position = dates.get_loc(d)
        lift[position : position + 2] = 20
    y = 50 + 2 * np.sin(2 * np.pi * np.arange(len(dates)) / 7) + lift + rng.normal(0, 1, len(dates))

    event = Event("promo", tuple(promos), 0, 1)
    told = _forecast(y, ProphetOptions(events=(event,)))
    plain = _forecast(y, ProphetOptions())

    assert _mae(y, told) < 0.3 * _mae(y, plain)


def test_prophet_uses_an_exogenous_column_and_its_intervals_are_reproducible() -> None:
    rng = np.random.default_rng(2)
    n = DAYS + HORIZON
    x = rng.normal(0, 1, n)
    y = 80 + 5 * x + 2 * np.sin(2 * np.pi * np.arange(n) / 7) + rng.normal(0, 0.5, n)

    used = _forecast(y, ProphetOptions(), x[:, None])
    ignored = _forecast(y, ProphetOptions(regressors=False), x[:, None])
    dates = pd.date_range(START, periods=DAYS + HORIZON, freq="D")
    once, twice = (
        forecast_once(ModelKind.PROPHET, (7,), y[:DAYS], HORIZON, (80.0,), dates=dates)
        for _ in range(2)
    )

    assert _mae(y, used) < 0.3 * _mae(y, ignored)
    np.testing.assert_array_equal(once.intervals[80.0][0], twice.intervals[80.0][0])
    assert (once.intervals[80.0][0] < once.mean).all()


def test_a_fitted_set_serves_prophet_with_its_regressor() -> None:
    rng = np.random.default_rng(3)
    n = 400
    x = rng.normal(0, 1, n + 14)
    y = 20 + 4 * x[:n] + rng.normal(0, 0.3, n)
    series = prepare(_daily(y, {"price": x[:n]}), SeriesOptions(season_length=7), 0)
    packed = FittedSet(14)
    packed.add(fit_series(series, ModelKind.PROPHET, 14, prophet=ProphetOptions()))

    one = pickle.loads(pickle.dumps(packed)).unpack("p")
    index, forecast = one.forecast(14, (90.0,), {"price": x[n:]}, "futures[0]")

    assert one.exogenous == ("price",)
    assert index[0] == series.horizon_index(1)[0]
    np.testing.assert_allclose(forecast.mean, 20 + 4 * x[n:], atol=1.5)
    with pytest.raises(InvalidArgument) as missing:
        one.forecast(14, (), {}, "futures[0]")
    assert missing.value.violations[0].field == "futures[0]"
    alone = fit_series(series, ModelKind.PROPHET, 14, prophet=ProphetOptions(regressors=False))
    assert alone.exogenous == ()
    assert len(alone.forecast(14, (), {}, "futures[0]")[1].mean) == 14


def _stamp(day: str) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(pd.Timestamp(day).to_pydatetime())
    return stamp


@pytest.mark.parametrize(
    ("options", "field", "expected"),
    [
        (pb.ProphetOptions(countries=["US", "XX"]), "prophet.countries[1]", "'XX'"),
        (pb.ProphetOptions(countries=["us"]), "prophet.countries[0]", "'us'"),
        (pb.ProphetOptions(changepoint_prior_scale=-1), "prophet.changepoint_prior_scale", "-1"),
        (
            pb.ProphetOptions(changepoint_prior_scale=float("nan")),
            "prophet.changepoint_prior_scale",
            "nan",
        ),
        (pb.ProphetOptions(seasonality_mode=7), "prophet.seasonality_mode", "7"),  # type: ignore[arg-type]
        (pb.ProphetOptions(events=[pb.ProphetEvent(name="sale")]), "prophet.events[0].dates", "1"),
        (
            pb.ProphetOptions(
                events=[
                    pb.ProphetEvent(name="a", dates=[_stamp("2024-01-01")]),
                    pb.ProphetEvent(name="a", dates=[_stamp("2024-02-01")]),
                ]
            ),
            "prophet.events[1].name",
            "unique",
        ),
        (
            pb.ProphetOptions(
                events=[pb.ProphetEvent(name="a", dates=[_stamp("2024-01-01")], lower_window=3)]
            ),
            "prophet.events[0]",
            "lower_window",
        ),
    ],
)
def test_bad_prophet_settings_are_refused_naming_the_field(
    options: pb.ProphetOptions, field: str, expected: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        prophet_of(options)
    assert refused.value.violations[0].field == field
    assert expected in refused.value.violations[0].description


def test_prophet_settings_bind_from_a_fit_request() -> None:
    request = pb.FitRequest(
        name="m",
        horizon=7,
        models=[pb.MODEL_PROPHET],
        prophet=pb.ProphetOptions(
            countries=["DE"],
            events=[pb.ProphetEvent(name="fair", dates=[_stamp("2024-03-01")], upper_window=2)],
            changepoint_prior_scale=0.5,
            changepoints=[_stamp("2024-02-01")],
            seasonality_mode=pb.SEASONALITY_MODE_MULTIPLICATIVE,
        ),
    )
    request.data.series.append(pb.Series(id="s"))

    job = fit_spec(request).job

    assert job.models == (ModelKind.PROPHET,)
    assert job.prophet == ProphetOptions(
        countries=("DE",),
        events=(Event("fair", (pd.Timestamp("2024-03-01"),), 0, 2),),
        changepoint_prior_scale=0.5,
        changepoints=(pd.Timestamp("2024-02-01"),),
        seasonality_mode="multiplicative",
    )
    assert job.plan().prophet == job.prophet
