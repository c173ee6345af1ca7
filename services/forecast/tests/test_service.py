"""The forecast service over real gRPC with a real NATS: forecasts, backtests, datasets, fits as
operations, predictions from the registered set, events, and clear errors for bad input."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pandas as pd
import pytest
from forecast_testing import (
    Client,
    local_level,
    logistic_map,
    proto_series,
    seasonal_random_walk,
    unique,
    watch,
)
from nats.aio.client import Client as Nats

from nexus.api.forecast.v1 import events_pb2
from nexus.api.forecast.v1 import forecast_service_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.forecast.engine import FITTED, STREAM

pytestmark = pytest.mark.timeout(180)
SN, ETS, THETA = pb.MODEL_SEASONAL_NAIVE, pb.MODEL_AUTO_ETS, pb.MODEL_AUTO_THETA
LGBM = pb.MODEL_LIGHTGBM


def _data(*series: pb.Series, season: int = 12) -> pb.SeriesData:
    return pb.SeriesData(series=series, options=pb.SeriesOptions(season_length=season))


def _simulated(n: int = 4, length: int = 72) -> list[pb.Series]:
    rng = np.random.default_rng(1)
    out = [proto_series(seasonal_random_walk(length, 12, rng), f"srw{i}") for i in range(n // 2)]
    return out + [
        proto_series(local_level(length, rng, noise_sd=2.0), f"ll{i}") for i in range(n - n // 2)
    ]


async def test_forecast_chooses_per_series_and_gives_intervals(client: Client) -> None:
    request = pb.ForecastRequest(
        data=_data(*_simulated()), horizon=12, levels=[80, 95], models=[SN, ETS]
    )
    reply = await client.forecast.Forecast(request, metadata=client.metadata)

    assert [f.series_id for f in reply.forecasts] == ["srw0", "srw1", "ll0", "ll1"]
    first = reply.forecasts[0]
    assert len(first.mean) == 12
    assert len(first.timestamps) == 12
    assert first.timestamps[0].ToDatetime() == pd.Timestamp("2024-01-04")  # after 72 hours
    lower80, upper80 = first.intervals[0].lower, first.intervals[0].upper
    lower95 = first.intervals[1].lower
    assert all(
        lo95 <= lo80 <= m <= hi
        for lo95, lo80, m, hi in zip(lower95, lower80, first.mean, upper80, strict=True)
    )
    assert [c.model for c in reply.choices] == [SN, SN, ETS, ETS]
    assert [f.model for f in reply.forecasts] == [SN, SN, ETS, ETS]


async def test_backtest_reports_errors_per_series_and_overall(client: Client) -> None:
    request = pb.BacktestRequest(
        data=_data(*_simulated()),
        horizon=12,
        levels=[80],
        models=[SN, ETS],
        backtest=pb.BacktestConfig(windows=2, metric=pb.SELECTION_METRIC_SMAPE),
    )
    reply = await client.forecast.Backtest(request, metadata=client.metadata)

    assert len(reply.series) == 4
    for choice in reply.series:
        assert {s.model for s in choice.scores} == {SN, ETS}
        scores = {s.model: s.metrics.smape for s in choice.scores}
        assert scores[choice.model] <= scores[choice.runner_up]
        assert choice.margin_percent == pytest.approx(
            100 * (1 - scores[choice.model] / scores[choice.runner_up])
        )
    assert {o.model for o in reply.overall} == {SN, ETS}
    assert 0 <= reply.chosen.coverage[0].rate <= 1
    assert reply.chosen.coverage[0].level == 80
    assert sum(w.series for w in reply.wins) == 4


def _long_format(n_series: int = 3, length: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    frames = [
        pd.DataFrame(
            {
                "unique_id": f"u{i}",
                "ds": pd.date_range("2024-01-01", periods=length, freq="D"),
                "y": seasonal_random_walk(length, 7, rng),
                "promo": rng.integers(0, 2, length).astype(float),
            }
        )
        for i in range(n_series)
    ]
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("fmt", [pb.DATASET_FORMAT_CSV, pb.DATASET_FORMAT_PARQUET])
async def test_an_uploaded_dataset_is_forecast_by_id(client: Client, fmt: int) -> None:
    frame = _long_format()
    buffer = io.BytesIO()
    if fmt == pb.DATASET_FORMAT_CSV:
        buffer.write(frame.to_csv(index=False).encode())
    else:
        frame.to_parquet(buffer, index=False)
    uploaded = await client.forecast.UploadDataset(
        pb.UploadDatasetRequest(name="sales", data=buffer.getvalue(), format=fmt),
        metadata=client.metadata,
    )
    assert (uploaded.dataset.series, uploaded.dataset.rows) == (3, 180)
    assert list(uploaded.dataset.exogenous) == ["promo"]

    data = pb.SeriesData(dataset_id=uploaded.dataset.id, series_ids=["u2", "u0"])
    reply = await client.forecast.Forecast(
        pb.ForecastRequest(data=data, horizon=7, models=[SN]), metadata=client.metadata
    )
    assert [f.series_id for f in reply.forecasts] == ["u2", "u0"]
    assert reply.forecasts[0].timestamps[0].ToDatetime() == pd.Timestamp("2024-03-01")


async def test_a_fit_runs_as_an_operation_registers_a_version_and_serves_predictions(
    client: Client, nats_client: Nats
) -> None:
    name = unique()
    fit = pb.FitRequest(
        name=name, data=_data(*_simulated(6)), horizon=12, models=[SN, ETS], promote_to="production"
    )
    started = await client.forecast.StartFit(pb.StartFitRequest(fit=fit), metadata=client.metadata)
    assert started.operation.name.startswith("forecast/operations/")

    seen = await watch(client, started.operation.name)

    done = seen[-1]
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    result = pb.FitResponse()
    assert done.response.Unpack(result)
    assert (result.version.name, result.version.version, result.series) == (name, "1", 6)
    assert {c.series_id: c.model for c in result.choices}["srw0"] == SN
    assert [c.level for c in result.chosen.coverage] == [80, 95]  # the default levels
    assert done.progress.metrics["series_done"] == 6.0
    assert "backtest_mase" in result.version.metrics

    predicted = await client.forecast.Predict(
        pb.PredictRequest(name=name, series_ids=["ll1", "srw0"], levels=[90]),
        metadata=client.metadata,
    )
    assert (predicted.model.version, predicted.model.alias) == ("1", "production")
    assert [f.series_id for f in predicted.forecasts] == ["ll1", "srw0"]
    assert len(predicted.forecasts[0].mean) == 12  # the fit's horizon
    assert predicted.forecasts[0].intervals[0].level == 90

    last = await nats_client.jetstream().get_last_msg(STREAM.name, FITTED)
    event = events_pb2.FitCompleted.FromString(last.data or b"")
    assert (event.model.name, event.model.version, event.series) == (name, "1", 6)
    assert (event.operation, event.promoted_to) == (started.operation.name, "production")

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await client.forecast.Predict(
            pb.PredictRequest(name=name, series_ids=["nope"]), metadata=client.metadata
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (unknown.value.details() or "")


async def test_lightgbm_is_chosen_fitted_across_series_and_served_from_the_registry(
    client: Client,
) -> None:
    """Noisy logistic maps (a nonlinear lag process): the automatic choice picks LightGBM; a fit
    registers one global model in the set, and Predict serves it with conformal intervals."""
    rng = np.random.default_rng(6)
    data = _data(*[proto_series(logistic_map(150, rng), f"m{i}") for i in range(6)], season=1)

    chosen = await client.forecast.Forecast(
        pb.ForecastRequest(data=data, horizon=6, backtest=pb.BacktestConfig(windows=2)),
        metadata=client.metadata,
    )
    assert [c.model for c in chosen.choices].count(LGBM) >= 5

    name = unique()
    fit = pb.FitRequest(
        name=name, data=data, horizon=6, models=[LGBM, SN], backtest=pb.BacktestConfig(windows=2)
    )
    started = await client.forecast.StartFit(pb.StartFitRequest(fit=fit), metadata=client.metadata)
    done = (await watch(client, started.operation.name))[-1]
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    result = pb.FitResponse()
    assert done.response.Unpack(result)
    assert result.version.metrics["wins_lightgbm"] >= 5

    predicted = await client.forecast.Predict(
        pb.PredictRequest(name=name, version="1", series_ids=["m0", "m3"], levels=[80]),
        metadata=client.metadata,
    )
    first = predicted.forecasts[0]
    assert [f.series_id for f in predicted.forecasts] == ["m0", "m3"]
    assert first.model == LGBM
    assert len(first.mean) == 6
    assert all(lo <= m <= hi for lo, m, hi in zip(*_band(first), strict=True))

    with pytest.raises(grpc.aio.AioRpcError) as beyond:
        await client.forecast.Predict(
            pb.PredictRequest(name=name, version="1", series_ids=["m0"], horizon=12, levels=[80]),
            metadata=client.metadata,
        )
    assert beyond.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "calibrated for 6 steps" in (beyond.value.details() or "")


async def test_prophet_and_a_network_are_backtested_fitted_and_served(client: Client) -> None:
    """Candidates Prophet (with US holidays) and the LSTM (a short training) through a fit: each
    series gets one of them, the set serves them with intervals."""
    rng = np.random.default_rng(7)
    series = [proto_series(logistic_map(160, rng), f"m{i}") for i in range(2)]
    series += [proto_series(seasonal_random_walk(160, 12, rng), f"s{i}") for i in range(2)]
    name = unique()
    fit = pb.FitRequest(
        name=name,
        data=_data(*series),
        horizon=6,
        models=[pb.MODEL_PROPHET, pb.MODEL_LSTM],
        backtest=pb.BacktestConfig(windows=2),
        parameters=[
            pb.LearnerParameters(
                model=pb.MODEL_LSTM, values={"epochs": 3, "hidden_size": 16, "layers": 1}
            )
        ],
        prophet=pb.ProphetOptions(countries=["US"], changepoint_prior_scale=0.1),
    )
    started = await client.forecast.StartFit(pb.StartFitRequest(fit=fit), metadata=client.metadata)
    done = (await watch(client, started.operation.name))[-1]
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    result = pb.FitResponse()
    assert done.response.Unpack(result)
    assert {c.model for c in result.choices} <= {pb.MODEL_PROPHET, pb.MODEL_LSTM}
    assert all(len(c.scores) == 2 for c in result.choices)
    assert result.version.parameters["lstm_epochs"] == "3"

    predicted = await client.forecast.Predict(
        pb.PredictRequest(name=name, version="1", series_ids=["m0", "s1"], levels=[80]),
        metadata=client.metadata,
    )
    for forecast in predicted.forecasts:
        assert len(forecast.mean) == 6
        assert all(lo <= m <= hi for lo, m, hi in zip(*_band(forecast), strict=True))


def _band(forecast: pb.SeriesForecast) -> tuple[list[float], list[float], list[float]]:
    interval = forecast.intervals[0]
    return list(interval.lower), list(forecast.mean), list(interval.upper)


async def test_a_cancelled_fit_registers_nothing(client: Client) -> None:
    name = unique()
    rng = np.random.default_rng(4)
    series = [proto_series(local_level(300, rng), f"s{i}") for i in range(150)]
    fit = pb.FitRequest(name=name, data=_data(*series, season=24), horizon=24, models=[ETS, THETA])
    started = await client.forecast.StartFit(pb.StartFitRequest(fit=fit), metadata=client.metadata)
    stream = client.operations.WatchOperation(
        ops_pb.WatchOperationRequest(name=started.operation.name), metadata=client.metadata
    )
    last, etas = None, []
    async for reply in stream:
        last = reply.operation
        running = last.state == ops_pb.OPERATION_STATE_RUNNING
        if running and last.progress.metrics.get("series_done", 0) > 0 and not etas:
            etas.append(last.progress.eta.ToTimedelta().total_seconds())
            await client.operations.CancelOperation(
                ops_pb.CancelOperationRequest(name=last.name), metadata=client.metadata
            )

    assert etas[0] > 0
    assert last is not None
    assert last.state == ops_pb.OPERATION_STATE_CANCELLED
    assert 0 < last.progress.metrics["series_done"] < 150
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.models.GetModel(
            models_pb.GetModelRequest(service="forecast", name=name), metadata=client.metadata
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def _irregular() -> pb.Series:
    series = proto_series(np.arange(40.0))
    series.timestamps[3].seconds += 1800  # half past, between two steps of the hour
    return series


BAD = [
    (  # irregular timestamps
        pb.ForecastRequest(data=_data(_irregular()), horizon=5),
        "irregular",
        grpc.StatusCode.INVALID_ARGUMENT,
        "data.series[0].timestamps[3]",
    ),
    (  # a run of NaN longer than allowed
        pb.ForecastRequest(
            data=pb.SeriesData(
                series=[proto_series(np.r_[np.arange(30.0), [np.nan] * 5, np.arange(30.0)])],
                options=pb.SeriesOptions(max_missing_run=4),
            ),
            horizon=5,
            models=[SN],
        ),
        "5 missing values",
        grpc.StatusCode.INVALID_ARGUMENT,
        "data.series[0].values",
    ),
    (  # too short for the season
        pb.ForecastRequest(data=_data(proto_series(np.arange(30.0))), horizon=6, models=[SN, ETS]),
        "has 30 values",
        grpc.StatusCode.INVALID_ARGUMENT,
        "data.series[0].values",
    ),
    (  # too short for the one model asked for
        pb.ForecastRequest(
            data=_data(proto_series(np.arange(20.0)), season=24), horizon=6, models=[THETA]
        ),
        "auto_theta with a season of 24 needs 48",
        grpc.StatusCode.INVALID_ARGUMENT,
        "data.series[0].values",
    ),
    (  # too short for a global model and its conformal windows
        pb.ForecastRequest(
            data=_data(proto_series(np.arange(1.0, 41.0))), horizon=6, models=[LGBM]
        ),
        "lightgbm with a season of 12 and intervals for 6 steps needs 61",
        grpc.StatusCode.INVALID_ARGUMENT,
        "data.series[0].values",
    ),
    (  # horizon longer than the series
        pb.ForecastRequest(data=_data(proto_series(np.arange(30.0))), horizon=31, models=[SN]),
        "longer than series",
        grpc.StatusCode.INVALID_ARGUMENT,
        "horizon",
    ),
    (  # horizon over the service's limit
        pb.ForecastRequest(data=_data(proto_series(np.arange(30.0))), horizon=201, models=[SN]),
        "at most 200",
        grpc.StatusCode.INVALID_ARGUMENT,
        "horizon",
    ),
    (  # too many series for a call answered at once
        pb.ForecastRequest(
            data=_data(*[proto_series(np.arange(30.0), f"s{i}") for i in range(21)]), horizon=2
        ),
        "more than the limit of 20",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
    (  # an unknown dataset
        pb.ForecastRequest(data=pb.SeriesData(dataset_id="0" * 32), horizon=2),
        "does not exist",
        grpc.StatusCode.NOT_FOUND,
        "",
    ),
    (  # an unknown country for Prophet's holidays
        pb.ForecastRequest(
            data=_data(proto_series(np.arange(30.0))),
            horizon=2,
            models=[pb.MODEL_PROPHET],
            prophet=pb.ProphetOptions(countries=["XX"]),
        ),
        "unknown country 'XX'",
        grpc.StatusCode.INVALID_ARGUMENT,
        "prophet.countries[0]",
    ),
    (  # a custom event's window out of range
        pb.ForecastRequest(
            data=_data(proto_series(np.arange(30.0))),
            horizon=2,
            prophet=pb.ProphetOptions(events=[pb.ProphetEvent(name="e", upper_window=99)]),
        ),
        "99",
        grpc.StatusCode.INVALID_ARGUMENT,
        "prophet.events[0].upper_window",
    ),
    (  # a network's training budget over its limit
        pb.ForecastRequest(
            data=_data(proto_series(np.arange(30.0))),
            horizon=2,
            parameters=[pb.LearnerParameters(model=pb.MODEL_LSTM, values={"epochs": 5000})],
        ),
        "epochs 5000 is out of range",
        grpc.StatusCode.INVALID_ARGUMENT,
        "parameters[0].values",
    ),
    (  # a bad level
        pb.ForecastRequest(data=_data(proto_series(np.arange(30.0))), horizon=2, levels=[100]),
        "not in (0, 100)",
        grpc.StatusCode.INVALID_ARGUMENT,
        "levels[0]",
    ),
]


@pytest.mark.parametrize(("request_", "words", "code", "field"), BAD)
async def test_bad_input_gets_a_clear_status_naming_the_field(
    client: Client, request_: pb.ForecastRequest, words: str, code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.forecast.Forecast(request_, metadata=client.metadata)

    assert refused.value.code() == code
    assert words in (refused.value.details() or "")
    assert field in (refused.value.details() or "")


async def test_huge_uploads_and_unknown_series_are_refused(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as huge:
        await client.forecast.UploadDataset(
            pb.UploadDatasetRequest(data=b"unique_id,ds,y\n" + b"a,2024-01-01,1\n" * 20_000),
            metadata=client.metadata,
        )
    assert huge.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as columns:
        await client.forecast.UploadDataset(
            pb.UploadDatasetRequest(data=b"id,time,value\n1,2,3\n"), metadata=client.metadata
        )
    assert columns.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing" in (columns.value.details() or "")

    uploaded = await client.forecast.UploadDataset(
        pb.UploadDatasetRequest(data=_long_format(1).to_csv(index=False).encode()),
        metadata=client.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await client.forecast.Backtest(
            pb.BacktestRequest(
                data=pb.SeriesData(dataset_id=uploaded.dataset.id, series_ids=["zz"]), horizon=3
            ),
            metadata=client.metadata,
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "zz" in (unknown.value.details() or "")


async def test_a_fit_reads_an_uploaded_dataset(client: Client) -> None:
    frame = _long_format(4)
    uploaded = await client.forecast.UploadDataset(
        pb.UploadDatasetRequest(data=frame.to_csv(index=False).encode()), metadata=client.metadata
    )
    name = unique()
    fit = pb.FitRequest(
        name=name,
        data=pb.SeriesData(dataset_id=uploaded.dataset.id, series_ids=["u1", "u3"]),
        horizon=7,
        models=[SN],
    )
    started = await client.forecast.StartFit(pb.StartFitRequest(fit=fit), metadata=client.metadata)
    done = (await watch(client, started.operation.name))[-1]
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error

    predicted = await client.forecast.Predict(
        pb.PredictRequest(name=name, version="1", series_ids=["u3"], horizon=3),
        metadata=client.metadata,
    )
    u3 = frame[frame.unique_id == "u3"]["y"].to_numpy()
    np.testing.assert_allclose(predicted.forecasts[0].mean, u3[-7:-4])  # a week ago, daily
    assert predicted.forecasts[0].timestamps[0].ToDatetime() == pd.Timestamp("2024-03-01")
    with pytest.raises(grpc.aio.AioRpcError) as not_fitted:
        await client.forecast.Predict(
            pb.PredictRequest(name=name, version="1", series_ids=["u0"]), metadata=client.metadata
        )
    assert not_fitted.value.code() == grpc.StatusCode.NOT_FOUND
