"""A forecast fit whose replica is SIGKILLed mid-fit: a second replica takes the operation after
the ack wait, fits again and ends it SUCCEEDED with exactly one registered version (the registry
finds the version of an operation's call, ADR 0028)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from forecast_testing import Client, local_level, proto_series, unique, watch

from nexus.api.forecast.v1 import forecast_service_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.common.launcher import Platform
from nexus.common.testing.launcher import StartPlatform

pytestmark = pytest.mark.timeout(240)
SERIES = 60


def slow_fit(name: str) -> pb.StartFitRequest:
    """A fit of seconds: 60 series of 300 hours, AutoTheta backtested and fitted on each (about
    0.15 s a series here)."""
    rng = np.random.default_rng(4)
    series = [proto_series(local_level(300, rng), f"s{i}") for i in range(SERIES)]
    data = pb.SeriesData(series=series, options=pb.SeriesOptions(season_length=24))
    fit = pb.FitRequest(name=name, data=data, horizon=24, models=[pb.MODEL_AUTO_THETA])
    return pb.StartFitRequest(fit=fit)


async def kill_when_fitting(platform: Platform, client: Client, operation: str) -> float:
    """SIGKILLs the first replica as soon as the operation reports series done; returns how many
    were done then."""
    stream = client.operations.WatchOperation(ops_pb.WatchOperationRequest(name=operation))
    async for reply in stream:
        done = reply.operation.progress.metrics.get("series_done", 0.0)
        if done > 0:
            stream.cancel()
            first = platform.children[0]
            first.process.kill()  # no goodbye, no heartbeat, no ack
            first.process.wait(10)
            platform.children.remove(first)
            return done
    raise AssertionError("the fit ended before it could be killed")


async def test_a_fit_whose_replica_is_killed_ends_on_another_with_one_version(
    start_platform: StartPlatform,
) -> None:
    platform = await start_platform("forecast", NEXUS_FORECAST_OPERATIONS_ACK_WAIT_S="2")
    name = unique()
    first = platform.children[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        client = Client(channel, "")
        started = await client.forecast.StartFit(slow_fit(name))
        operation = started.operation.name
        killed_at = await kill_when_fitting(platform, client, operation)
    await platform.start_services()  # replica B
    second = platform.children[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        client = Client(channel, "")
        done = (await watch(client, operation))[-1]
        model = await client.models.GetModel(
            models_pb.GetModelRequest(service="forecast", name=name)
        )
    assert 0 < killed_at < SERIES  # killed mid-fit
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    assert done.attempt == 2
    fitted = pb.FitResponse()
    assert done.response.Unpack(fitted)
    assert (fitted.version.version, fitted.series) == ("1", SERIES)
    assert [v.version for v in model.model.versions] == ["1"]
