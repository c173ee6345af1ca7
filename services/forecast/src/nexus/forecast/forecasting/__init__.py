"""Forecasting, free of gRPC: series on a grid, statsforecast models per series, mlforecast
models across series, backtests, choices, fits."""

from nexus.forecast.forecasting.backtest import (
    Choice,
    Known,
    Plan,
    applicable,
    backtest,
    check_fit_length,
    check_length,
    choose,
    global_backtests,
    window_forecasts,
)
from nexus.forecast.forecasting.fitting import (
    FittedSeries,
    FittedSet,
    Report,
    SharedModel,
    choose_and_fit,
    fit_globals,
    fit_series,
    future_matrix,
    report,
    uses_exogenous,
)
from nexus.forecast.forecasting.learners import GlobalModel
from nexus.forecast.forecasting.metrics import Errors, average, mase, mase_scale, smape
from nexus.forecast.forecasting.models import (
    DEFAULT_CANDIDATES,
    ENSEMBLE,
    GLOBAL,
    ModelKind,
    candidates,
)
from nexus.forecast.forecasting.predicting import Forecast, forecast_once
from nexus.forecast.forecasting.series import (
    Prepared,
    Series,
    SeriesOptions,
    default_season,
    fill_missing,
    infer_frequency,
    prepare,
)

__all__ = [
    "DEFAULT_CANDIDATES",
    "ENSEMBLE",
    "GLOBAL",
    "Choice",
    "Errors",
    "FittedSeries",
    "FittedSet",
    "Forecast",
    "GlobalModel",
    "Known",
    "ModelKind",
    "Plan",
    "Prepared",
    "Report",
    "Series",
    "SeriesOptions",
    "SharedModel",
    "applicable",
    "average",
    "backtest",
    "candidates",
    "check_fit_length",
    "check_length",
    "choose",
    "choose_and_fit",
    "default_season",
    "fill_missing",
    "fit_globals",
    "fit_series",
    "forecast_once",
    "future_matrix",
    "global_backtests",
    "infer_frequency",
    "mase",
    "mase_scale",
    "prepare",
    "report",
    "smape",
    "uses_exogenous",
    "window_forecasts",
]
