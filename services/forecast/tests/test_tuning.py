"""StartTune over real gRPC with a real NATS: a small Optuna search of LightGBM on the backtest
error of generated series, as an operation with progress, a trial and a time budget, a cancel,
and clear statuses for what cannot be tuned."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from forecast_testing import Client, logistic_map, proto_series, unique, watch

from nexus.api.forecast.v1 import forecast_service_pb2 as pb
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.forecast.forecasting.tuning import LEAVES, RATE, ROUNDS

pytestmark = pytest.mark.timeout(180)


def _tune(**budget: float) -> pb.TuneRequest:
    rng = np.random.default_rng(5)
    series = [proto_series(logistic_map(120, rng), f"s{i}") for i in range(3)]
    return pb.TuneRequest(
        data=pb.SeriesData(series=series, options=pb.SeriesOptions(season_length=4)),
        horizon=4,
        backtest=pb.BacktestConfig(windows=1),
        seed=1,
        **budget,  # type: ignore[arg-type]
    )


async def _start(client: Client, tune: pb.TuneRequest) -> str:
    started = await client.forecast.StartTune(
        pb.StartTuneRequest(tune=tune), metadata=client.metadata
    )
    return started.operation.name


async def test_a_search_within_its_trial_budget_reports_progress_and_the_best(
    client: Client,
) -> None:
    seen = await watch(client, await _start(client, _tune(max_trials=3)))

    done = seen[-1]
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    result = pb.TuneResponse()
    assert done.response.Unpack(result)
    assert result.model == pb.MODEL_LIGHTGBM
    assert result.trials == 3
    assert done.progress.metrics["trials_done"] == 3
    assert done.progress.metrics["best_mase"] == pytest.approx(result.best.mase)
    assert result.best.mase <= result.defaults.mase  # the defaults are trial one
    params = dict(result.best_parameters)
    assert set(params) == {"n_estimators", "learning_rate", "num_leaves"}
    assert RATE[0] <= params["learning_rate"] <= RATE[1]
    assert ROUNDS[0] <= params["n_estimators"] <= ROUNDS[1]
    assert LEAVES[0] <= params["num_leaves"] <= LEAVES[1]


async def test_the_time_budget_stops_the_search_after_the_trial_it_started(
    client: Client,
) -> None:
    # No trial starts after 1 ms: the first starts at once, and no fit is that fast.
    seen = await watch(client, await _start(client, _tune(max_trials=50, max_seconds=0.001)))

    result = pb.TuneResponse()
    assert seen[-1].response.Unpack(result)
    assert result.trials == 1


async def test_a_cancelled_search_stops_between_trials(client: Client) -> None:
    name = await _start(client, _tune(max_trials=1000))
    stream = client.operations.WatchOperation(
        ops_pb.WatchOperationRequest(name=name), metadata=client.metadata
    )
    last = None
    async for reply in stream:
        last = reply.operation
        if last.state == ops_pb.OPERATION_STATE_RUNNING and last.progress.metrics.get(
            "trials_done"
        ):
            await client.operations.CancelOperation(
                ops_pb.CancelOperationRequest(name=name), metadata=client.metadata
            )

    assert last is not None
    assert last.state == ops_pb.OPERATION_STATE_CANCELLED
    assert 0 < last.progress.metrics["trials_done"] < 1000


@pytest.mark.parametrize(
    ("tune", "words"),
    [
        (pb.TuneRequest(horizon=4, model=pb.MODEL_AUTO_ETS), "MODEL_LIGHTGBM"),
        (pb.TuneRequest(horizon=4, max_trials=1001), "max_trials"),
        (pb.TuneRequest(horizon=4, max_seconds=-1), "max_seconds"),
        (pb.TuneRequest(horizon=4, max_seconds=float("nan")), "max_seconds"),
    ],
)
async def test_what_cannot_be_tuned_is_refused_at_the_start(
    client: Client, tune: pb.TuneRequest, words: str
) -> None:
    tune.data.CopyFrom(_tune().data)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _start(client, tune)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (refused.value.details() or "")


async def test_a_fit_takes_the_parameters_a_search_found(client: Client) -> None:
    seen = await watch(client, await _start(client, _tune(max_trials=2)))
    tuned = pb.TuneResponse()
    assert seen[-1].response.Unpack(tuned)
    small = {"num_leaves": 7.0, "n_estimators": 20.0, "learning_rate": 0.3}

    async def fit(values: dict[str, float]) -> pb.FitResponse:
        name = unique()
        request = pb.FitRequest(
            name=name,
            data=_tune().data,
            horizon=4,
            models=[pb.MODEL_LIGHTGBM],
            backtest=pb.BacktestConfig(windows=2),
            parameters=[pb.LearnerParameters(model=pb.MODEL_LIGHTGBM, values=values)],
        )
        started = await client.forecast.StartFit(
            pb.StartFitRequest(fit=request), metadata=client.metadata
        )
        done = (await watch(client, started.operation.name))[-1]
        assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
        result = pb.FitResponse()
        assert done.response.Unpack(result)
        return result

    found, other = await fit(dict(tuned.best_parameters)), await fit(small)

    leaves = found.version.parameters["lightgbm_num_leaves"]
    assert float(leaves) == pytest.approx(tuned.best_parameters["num_leaves"])
    assert other.version.parameters["lightgbm_num_leaves"] == "7"
    # The parameters reach the learner: the backtests differ.
    assert found.version.metrics["backtest_mase"] != other.version.metrics["backtest_mase"]


@pytest.mark.parametrize(
    ("values", "model", "words"),
    [
        ({"max_depth": 3.0}, pb.MODEL_LIGHTGBM, "'max_depth'; known"),
        ({"num_leaves": 0.5}, pb.MODEL_LIGHTGBM, "out of range"),
        ({"learning_rate": float("nan")}, pb.MODEL_XGBOOST, "out of range"),
        ({}, pb.MODEL_AUTO_ETS, "MODEL_LIGHTGBM, MODEL_XGBOOST, MODEL_LSTM or MODEL_TRANSFORMER"),
    ],
)
async def test_bad_learner_parameters_are_refused_at_the_start(
    client: Client, values: dict[str, float], model: int, words: str
) -> None:
    request = pb.FitRequest(
        name=unique(),
        data=_tune().data,
        horizon=4,
        parameters=[pb.LearnerParameters(model=model, values=values)],  # type: ignore[arg-type]
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.forecast.StartFit(pb.StartFitRequest(fit=request), metadata=client.metadata)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (refused.value.details() or "")
