"""Global machine-learning models (mlforecast LightGBM / XGBoost) over real fits on simulated
series: conformal intervals cover at their level, the automatic choice picks LightGBM where a
nonlinear lag process generated the series, a fitted set serves it, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
from forecast_testing import hourly, logistic_map, round_trip, seasonal_ar

from nexus.common.errors import InvalidArgument
from nexus.forecast.forecasting import (
    ModelKind,
    Plan,
    SeriesOptions,
    applicable,
    backtest,
    check_fit_length,
    fit_globals,
    fit_series,
    global_backtests,
    prepare,
    report,
)
from nexus.forecast.forecasting.learners import fit_global

LEVELS = (80.0, 95.0)


def test_lightgbm_conformal_intervals_cover_at_their_level() -> None:
    """50 seasonal AR(1) series, one global model, 6 steps each forecast past their end; 20
    held-out windows (enough for 95 %: split conformal needs k >= 19). Split conformal covers
    at least its level (17 of 21 order statistics at 80 %: 0.81), and the calibration model
    learns from 120 values fewer than the final one, so its errors run larger: coverage sits a
    little above the level (0.79-0.88 at 80 %, 0.95-0.99 at 95 % over seeds 1-6). Tolerance:
    0.03 below, 0.08 above."""
    rng = np.random.default_rng(1)
    horizon, length = 6, 200
    ys = [seasonal_ar(length + horizon, 12, rng) for _ in range(50)]
    options = SeriesOptions(season_length=12)
    series = [prepare(hourly(y[:length], f"s{i}"), options, 0) for i, y in enumerate(ys)]

    model = fit_global(ModelKind.LIGHTGBM, series, horizon)
    forecasts = model.forecast([s.id for s in series], horizon, LEVELS)

    assert model.forecaster.prediction_intervals.n_windows == 20
    for level in LEVELS:
        inside = [
            (y[length:] >= forecasts[f"s{i}"].intervals[level][0])
            & (y[length:] <= forecasts[f"s{i}"].intervals[level][1])
            for i, y in enumerate(ys)
        ]
        assert level / 100 - 0.03 <= float(np.mean(inside)) <= level / 100 + 0.08


def test_the_automatic_choice_picks_lightgbm_on_a_nonlinear_lag_process() -> None:
    """16 noisy logistic maps: the default candidates (seasonal naive, AutoTheta, AutoETS,
    LightGBM; no season, so no MSTL); LightGBM should win nearly every series, by far."""
    rng = np.random.default_rng(0)
    options = SeriesOptions(season_length=1)
    series = [prepare(hourly(logistic_map(160, rng), f"m{i}"), options, 0) for i in range(16)]
    plan = Plan(horizon=6, windows=2)
    kinds = {s.id: applicable(s, (), plan) for s in series}

    known = global_backtests(series, kinds, plan)
    choices = [backtest(s, kinds[s.id], plan, known[s.id]) for s in series]
    summary = report(choices)

    assert ModelKind.LIGHTGBM in kinds["m0"]
    assert ModelKind.MSTL not in kinds["m0"]
    assert summary.wins.get(ModelKind.LIGHTGBM, 0) >= 15
    others = [e.mase for k, e in summary.overall.items() if k is not ModelKind.LIGHTGBM]
    assert summary.overall[ModelKind.LIGHTGBM].mase < 0.5 * min(others)


def test_a_fitted_set_serves_a_global_model_as_fitted() -> None:
    rng = np.random.default_rng(2)
    options = SeriesOptions(season_length=1)
    series = [prepare(hourly(logistic_map(120, rng), f"m{i}"), options, 0) for i in range(4)]
    kinds = {s.id: (ModelKind.XGBOOST,) for s in series}
    fitted = [fit_series(s, ModelKind.XGBOOST, 6) for s in series]
    models = fit_globals(series, kinds, {f.shared for f in fitted}, 6)

    loaded = round_trip(6, fitted, models)
    one = loaded.unpack("m2")
    index, forecast = one.forecast(6, (90.0,), {}, "x", loaded.unpack_shared(one.shared))
    direct = models[one.shared].forecast(["m2"], 6, (90.0,))["m2"]

    assert (one.kind, len(models)) == (ModelKind.XGBOOST, 1)
    np.testing.assert_allclose(forecast.mean, direct.mean)
    lower, upper = forecast.intervals[90.0]
    assert (lower <= forecast.mean).all()
    assert (forecast.mean <= upper).all()
    assert index[0] == series[2].horizon_index(1)[0]


def test_bad_input_to_a_global_model_is_refused_with_what_it_needs() -> None:
    short = prepare(hourly(np.linspace(1, 40, 40)), SeriesOptions(season_length=12), 0)
    with pytest.raises(InvalidArgument) as refused:
        check_fit_length(short, ModelKind.LIGHTGBM, 6)
    assert refused.value.violations[0].field == "series.values"
    assert "lightgbm with a season of 12 and intervals for 6 steps needs 61" in (
        refused.value.violations[0].description
    )

    rng = np.random.default_rng(3)
    options = SeriesOptions(season_length=1)
    series = [prepare(hourly(logistic_map(80, rng), f"m{i}"), options, 0) for i in range(2)]
    model = fit_global(ModelKind.LIGHTGBM, series, 4)
    with pytest.raises(InvalidArgument) as beyond:
        model.forecast(["m0"], 8, (80.0,))
    assert beyond.value.violations[0].field == "horizon"
    assert "calibrated for 4 steps" in beyond.value.violations[0].description
    assert len(model.forecast(["m0"], 8, ())["m0"].mean) == 8  # no levels: any horizon
