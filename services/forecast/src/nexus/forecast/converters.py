"""Protobuf messages <-> domain objects, in one place; the servicer only calls these."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
import pandas as pd
from google.api import httpbody_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from nexus.api.common.v1 import common_pb2
from nexus.api.forecast.v1 import forecast_service_pb2 as pb
from nexus.common.errors import InvalidArgument
from nexus.common.registry import Resolved, Selector
from nexus.common.registry.converters import version_to_proto
from nexus.forecast.charts import DEFAULT_HEIGHT, DEFAULT_WIDTH, ChartFormat, ChartSpec, Image
from nexus.forecast.datasets import DatasetInfo, Format
from nexus.forecast.engine import (
    DEFAULT_LEVELS,
    DataSpec,
    FitSpec,
    Fitted,
    Forecasted,
    Job,
    Predicted,
    PredictSpec,
    SeriesResult,
    Tuned,
    TuneSpec,
)
from nexus.forecast.forecasting import (
    Choice,
    Errors,
    ModelKind,
    Report,
    Series,
    SeriesOptions,
    neural,
)
from nexus.forecast.forecasting.learners import DEFAULTS, INTEGER
from nexus.forecast.forecasting.models import NEURAL
from nexus.forecast.forecasting.prophet_model import Event, ProphetOptions, check
from nexus.forecast.forecasting.tuning import TUNABLE

MODELS = {
    pb.MODEL_AUTO_ARIMA: ModelKind.AUTO_ARIMA,
    pb.MODEL_AUTO_ETS: ModelKind.AUTO_ETS,
    pb.MODEL_AUTO_THETA: ModelKind.AUTO_THETA,
    pb.MODEL_SEASONAL_NAIVE: ModelKind.SEASONAL_NAIVE,
    pb.MODEL_MSTL: ModelKind.MSTL,
    pb.MODEL_LIGHTGBM: ModelKind.LIGHTGBM,
    pb.MODEL_XGBOOST: ModelKind.XGBOOST,
    pb.MODEL_PROPHET: ModelKind.PROPHET,
    pb.MODEL_LSTM: ModelKind.LSTM,
    pb.MODEL_TRANSFORMER: ModelKind.TRANSFORMER,
    pb.MODEL_ENSEMBLE: ModelKind.ENSEMBLE,
}
KINDS = {kind: value for value, kind in MODELS.items()}
METRICS = {
    pb.SELECTION_METRIC_UNSPECIFIED: "mase",
    pb.SELECTION_METRIC_MASE: "mase",
    pb.SELECTION_METRIC_SMAPE: "smape",
    pb.SELECTION_METRIC_RMSE: "rmse",
}
FORMATS = {
    pb.DATASET_FORMAT_UNSPECIFIED: Format.CSV,
    pb.DATASET_FORMAT_CSV: Format.CSV,
    pb.DATASET_FORMAT_PARQUET: Format.PARQUET,
}
CHART_FORMATS = {
    pb.CHART_FORMAT_UNSPECIFIED: ChartFormat.PNG,
    pb.CHART_FORMAT_PNG: ChartFormat.PNG,
    pb.CHART_FORMAT_SVG: ChartFormat.SVG,
}
DEFAULT_WINDOWS = 3
DEFAULT_TRIALS = 20
MAX_PARAMETER = 10_000.0
DEFAULT_TUNE_SECONDS = 600.0


def upload_format(request: pb.UploadDatasetRequest) -> Format:
    """The upload's format."""
    if request.format not in FORMATS:
        raise InvalidArgument.for_field("format", f"unknown format {request.format}")
    return FORMATS[request.format]


def job_of(
    request: pb.ForecastRequest | pb.BacktestRequest | pb.FitRequest | pb.RenderChartRequest,
) -> Job:
    """The job a Forecast, Backtest, Fit or RenderChart request describes (with the global
    models' parameters and Prophet's settings where the request has them)."""
    models = models_of(request.models)
    job = _job(request.data, request.horizon, request.backtest, tuple(request.levels), models)
    if isinstance(request, pb.RenderChartRequest):
        return job
    return replace(
        job, params=learner_params(request.parameters), prophet=prophet_of(request.prophet)
    )


SEASONALITY_MODES: dict[int, Literal["additive", "multiplicative"]] = {
    pb.SEASONALITY_MODE_UNSPECIFIED: "additive",
    pb.SEASONALITY_MODE_ADDITIVE: "additive",
    pb.SEASONALITY_MODE_MULTIPLICATIVE: "multiplicative",
}
DEFAULT_PROPHET = ProphetOptions()


def prophet_of(options: pb.ProphetOptions) -> ProphetOptions:
    """Prophet's settings, checked (unset fields: Prophet's defaults).

    Raises:
        InvalidArgument: An unknown country or mode, a bad scale, an event without a name or
            dates, naming the field under `prophet`.
    """
    if options.seasonality_mode not in SEASONALITY_MODES:
        raise InvalidArgument.for_field(
            "prophet.seasonality_mode", f"unknown mode {options.seasonality_mode}"
        )
    if not math.isfinite(options.changepoint_prior_scale):
        raise InvalidArgument.for_field(
            "prophet.changepoint_prior_scale", f"{options.changepoint_prior_scale} is not a number"
        )
    found = ProphetOptions(
        countries=tuple(options.countries),
        events=tuple(
            Event(e.name, _dates(e.dates), e.lower_window, e.upper_window) for e in options.events
        ),
        changepoint_prior_scale=options.changepoint_prior_scale
        or DEFAULT_PROPHET.changepoint_prior_scale,
        n_changepoints=options.n_changepoints or DEFAULT_PROPHET.n_changepoints,
        changepoints=_dates(options.changepoints),
        seasonality_mode=SEASONALITY_MODES[options.seasonality_mode],
        regressors=not options.ignore_exogenous,
    )
    check(found)
    return found


def _dates(timestamps: Sequence[Timestamp]) -> tuple[pd.Timestamp, ...]:
    return tuple(_index(timestamps))


def _job(
    data: pb.SeriesData,
    horizon: int,
    backtest: pb.BacktestConfig,
    levels: tuple[float, ...] = (),
    models: tuple[ModelKind, ...] = (),
) -> Job:
    if backtest.metric not in METRICS:
        raise InvalidArgument.for_field("backtest.metric", f"unknown metric {backtest.metric}")
    return Job(
        data=data_of(data),
        horizon=horizon,
        levels=levels,
        models=models,
        windows=backtest.windows or DEFAULT_WINDOWS,
        step=backtest.step,
        metric=METRICS[backtest.metric],
    )


def chart_spec(request: pb.RenderChartRequest) -> ChartSpec:
    """How a chart looks (sizes are bounded by the request's field rules)."""
    if request.format not in CHART_FORMATS:
        raise InvalidArgument.for_field("format", f"unknown format {request.format}")
    return ChartSpec(
        format=CHART_FORMATS[request.format],
        width=request.width or DEFAULT_WIDTH,
        height=request.height or DEFAULT_HEIGHT,
        title=request.title,
        history=request.history,
    )


def image_to_proto(image: Image) -> pb.RenderChartResponse:
    """A rendered chart, served raw over HTTP with its media type."""
    chart = httpbody_pb2.HttpBody(content_type=image.media_type, data=image.data)
    return pb.RenderChartResponse(chart=chart)


def tune_spec(request: pb.TuneRequest) -> TuneSpec:
    """A hyperparameter search from its request: LightGBM unless XGBoost is named; 20 trials
    and 600 s unless a budget is given."""
    if request.model == pb.MODEL_UNSPECIFIED:
        kind = ModelKind.LIGHTGBM
    elif MODELS.get(request.model) in TUNABLE:
        kind = MODELS[request.model]
    else:
        raise InvalidArgument.for_field("model", "only MODEL_LIGHTGBM and MODEL_XGBOOST are tuned")
    if not math.isfinite(request.max_seconds):  # NaN passes the field's range rule
        raise InvalidArgument.for_field("max_seconds", f"{request.max_seconds} is not a number")
    return TuneSpec(
        job=_job(request.data, request.horizon, request.backtest, models=(kind,)),
        kind=kind,
        trials=request.max_trials or DEFAULT_TRIALS,
        seconds=request.max_seconds or DEFAULT_TUNE_SECONDS,
        seed=request.seed,
    )


def learner_params(given: Sequence[pb.LearnerParameters]) -> dict[ModelKind, dict[str, float]]:
    """Learner parameters by global model, checked: a global model once, known names, values
    up to MAX_PARAMETER (counts at least 1, rates above 0; the networks' own maxima)."""
    found: dict[ModelKind, dict[str, float]] = {}
    for i, entry in enumerate(given):
        kind = MODELS.get(entry.model)
        if kind not in (*TUNABLE, *NEURAL) or kind in found:
            raise InvalidArgument.for_field(
                f"parameters[{i}].model",
                "MODEL_LIGHTGBM, MODEL_XGBOOST, MODEL_LSTM or MODEL_TRANSFORMER, each once",
            )
        if kind in NEURAL:
            neural.check_params(kind, entry.values, f"parameters[{i}].values")
            found[kind] = dict(entry.values)
            continue
        for name, value in entry.values.items():
            if name not in DEFAULTS[kind]:
                raise InvalidArgument.for_field(
                    f"parameters[{i}].values", f"{name!r}; known: {', '.join(DEFAULTS[kind])}"
                )
            low = 1.0 if name in INTEGER else 0.0  # counts are whole; a rate above 0
            if not (low <= value <= MAX_PARAMETER and value > 0):  # NaN fails too
                raise InvalidArgument.for_field(
                    f"parameters[{i}].values",
                    f"{name} {value} is out of range ({low:g} to {MAX_PARAMETER:g})",
                )
        found[kind] = dict(entry.values)
    return found


def tuned_to_proto(tuned: Tuned) -> pb.TuneResponse:
    """A search's result."""
    return pb.TuneResponse(
        model=KINDS[tuned.kind],
        best_parameters=tuned.params,
        best=metrics_to_proto(tuned.errors),
        defaults=metrics_to_proto(tuned.defaults),
        trials=tuned.trials,
    )


def fit_spec(request: pb.FitRequest) -> FitSpec:
    """A fit from its request; backtest coverage at 80 and 95 % unless levels are given."""
    job = job_of(request)
    if not job.levels:
        job = replace(job, levels=DEFAULT_LEVELS)
    return FitSpec(request.name, job, request.promote_to, request.description)


def models_of(values: Sequence[int]) -> tuple[ModelKind, ...]:
    """Candidate models; none means the default candidates."""
    kinds = []
    for i, value in enumerate(values):
        if value not in MODELS:
            raise InvalidArgument.for_field(f"models[{i}]", f"unknown or unset model {value}")
        kinds.append(MODELS[value])  # type: ignore[index]
    return tuple(kinds)


def data_of(data: pb.SeriesData) -> DataSpec:
    """Where the series are."""
    return DataSpec(
        series=tuple(series_of(s, f"data.series[{i}]") for i, s in enumerate(data.series)),
        dataset_id=data.dataset_id,
        series_ids=tuple(data.series_ids),
        options=options_of(data.options),
    )


def options_of(options: pb.SeriesOptions) -> SeriesOptions:
    """How to read series."""
    return SeriesOptions(
        frequency=options.frequency,
        season_length=options.season_length,
        extra_seasonalities=tuple(options.extra_seasonalities),
        max_missing_run=options.max_missing_run,
    )


def series_of(series: pb.Series, where: str) -> Series:
    """One inline series."""
    return Series(
        id=series.id,
        timestamps=_index(series.timestamps),
        values=np.asarray(series.values, dtype=np.float64),
        exogenous=_columns(series.exogenous, f"{where}.exogenous"),
        future=_columns(series.future_exogenous, f"{where}.future_exogenous"),
        field=where,
    )


def _index(timestamps: Sequence[Timestamp]) -> pd.DatetimeIndex:
    nanos = np.fromiter(
        (t.seconds * 1_000_000_000 + t.nanos for t in timestamps),
        dtype=np.int64,
        count=len(timestamps),
    )
    return pd.DatetimeIndex(nanos.astype("datetime64[ns]"))


def _columns(columns: Sequence[pb.Exogenous], where: str) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for i, column in enumerate(columns):
        if column.name in found:
            raise InvalidArgument.for_field(f"{where}[{i}].name", f"{column.name!r} twice")
        found[column.name] = np.asarray(column.values, dtype=np.float64)
    return found


def predict_spec(request: pb.PredictRequest) -> PredictSpec:
    """A Predict call."""
    futures = {
        f.series_id: _columns(f.exogenous, f"futures[{i}].exogenous")
        for i, f in enumerate(request.futures)
    }
    return PredictSpec(
        name=request.name,
        series_ids=tuple(request.series_ids),
        horizon=request.horizon,
        levels=tuple(request.levels),
        futures=futures,
        selector=Selector(request.alias, request.version, request.routing_key),
    )


def _timestamps(index: pd.DatetimeIndex) -> list[Timestamp]:
    out = []
    for nanos in index.asi8:
        stamp = Timestamp()
        stamp.FromNanoseconds(int(nanos))
        out.append(stamp)
    return out


def series_forecast(result: SeriesResult) -> pb.SeriesForecast:
    """One series' forecast."""
    forecast = result.forecast
    return pb.SeriesForecast(
        series_id=result.series_id,
        model=KINDS[result.model],
        timestamps=_timestamps(result.index),
        mean=forecast.mean.tolist(),
        intervals=[
            pb.Interval(level=level, lower=lower.tolist(), upper=upper.tolist())
            for level, (lower, upper) in forecast.intervals.items()
        ],
    )


def metrics_to_proto(errors: Errors) -> pb.Metrics:
    """Errors as Metrics."""
    return pb.Metrics(
        mase=errors.mase,
        smape=errors.smape,
        rmse=errors.rmse,
        coverage=[pb.Coverage(level=level, rate=rate) for level, rate in errors.coverage.items()],
    )


def _scores(scores: Mapping[ModelKind, Errors]) -> list[pb.ModelScore]:
    return [pb.ModelScore(model=KINDS[k], metrics=metrics_to_proto(e)) for k, e in scores.items()]


def choice_to_proto(choice: Choice) -> pb.SeriesChoice:
    """Which model won a series, by how much."""
    return pb.SeriesChoice(
        series_id=choice.series_id,
        model=KINDS[choice.model],
        runner_up=KINDS[choice.runner_up] if choice.runner_up else pb.MODEL_UNSPECIFIED,
        margin_percent=choice.margin_percent,
        scores=_scores(choice.scores),
    )


def _wins(report: Report) -> list[pb.ModelWins]:
    return [pb.ModelWins(model=KINDS[k], series=n) for k, n in report.wins.items()]


def forecasted_to_proto(forecasted: Forecasted) -> pb.ForecastResponse:
    """A Forecast call's answer."""
    return pb.ForecastResponse(
        forecasts=[series_forecast(r) for r in forecasted.forecasts],
        choices=[choice_to_proto(c) for c in forecasted.choices],
    )


def report_to_proto(report: Report) -> pb.BacktestResponse:
    """A Backtest call's answer."""
    return pb.BacktestResponse(
        series=[choice_to_proto(c) for c in report.choices],
        overall=_scores(report.overall),
        chosen=metrics_to_proto(report.chosen),
        wins=_wins(report),
    )


def fitted_to_proto(fitted: Fitted, max_choices: int) -> pb.FitResponse:
    """A fit's result; the first `max_choices` series' choices."""
    report = fitted.report
    listed = report.choices[:max_choices]
    return pb.FitResponse(
        version=version_to_proto(fitted.version),
        series=len(report.choices),
        wins=_wins(report),
        chosen=metrics_to_proto(report.chosen),
        choices=[choice_to_proto(c) for c in listed],
        choices_omitted=len(report.choices) - len(listed),
    )


def predicted_to_proto(predicted: Predicted) -> pb.PredictResponse:
    """A Predict call's answer, with the version that served."""
    resolved: Resolved = predicted.model
    return pb.PredictResponse(
        forecasts=[series_forecast(r) for r in predicted.forecasts],
        model=common_pb2.ModelRef(
            name=resolved.name, version=resolved.version, alias=resolved.alias
        ),
    )


def dataset_to_proto(info: DatasetInfo) -> pb.UploadDatasetResponse:
    """An upload's answer."""
    created = Timestamp()
    created.FromDatetime(info.created)
    return pb.UploadDatasetResponse(
        dataset=pb.Dataset(
            id=info.id,
            name=info.name,
            series=info.series,
            rows=info.rows,
            exogenous=info.exogenous,
            sha256=info.sha256,
            create_time=created,
        )
    )
