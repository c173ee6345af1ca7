"""ServiceHost and the error interceptor over a real gRPC server: statuses, readiness, drain."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as pb_grpc
from nexus.common.errors import InvalidArgument, NotFound, ResourceExhausted
from nexus.common.errors.interceptor import INTERNAL_MESSAGE
from nexus.common.natsserver import NatsServer
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings, ServiceSettings
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.integration


class Scripted(pb_grpc.AnomalyServiceServicer):
    """A servicer whose ScorePoints behaves as the detector name says."""

    async def ScorePoints(self, request: pb.ScorePointsRequest, context: Any) -> Any:
        if request.name == "bad":
            raise InvalidArgument.for_field("points[0].values", "contains NaN")
        if request.name == "missing":
            raise NotFound("detector 'missing' does not exist")
        if request.name == "big":
            raise ResourceExhausted.too_large("points", 20, 10)
        if request.name == "bug":
            raise RuntimeError("secret internal detail: password=hunter2")
        if request.name == "slow":
            await asyncio.sleep(0.5)
        return pb.ScorePointsResponse(threshold=1.0)

    async def WatchAnomalies(self, request: pb.WatchAnomaliesRequest, context: Any) -> Any:
        yield pb.WatchAnomaliesResponse()
        raise NotFound("the stream ended badly")


@pytest.fixture
async def host(nexus_settings: NexusSettings) -> AsyncIterator[ServiceHost]:
    common = nexus_settings.model_copy(update={"auth_enabled": False})
    host = ServiceHost("test", ServiceSettings(shutdown_grace_s=2.0), common)
    await host.open()
    host.add_servicer(pb_grpc.add_AnomalyServiceServicer_to_server, Scripted(), "test.Scripted")
    await host.start()
    yield host
    await host.stop()


@pytest.fixture
async def stub(host: ServiceHost) -> AsyncIterator[pb_grpc.AnomalyServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        yield pb_grpc.AnomalyServiceStub(channel)


def score(name: str) -> pb.ScorePointsRequest:
    """A request that keeps the declared field rules (a name, a point)."""
    return pb.ScorePointsRequest(name=name, points=[pb.Point(values=[1.0])])


async def status_of(
    stub: pb_grpc.AnomalyServiceStub, name: str, request: pb.ScorePointsRequest | None = None
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ScorePoints(request or score(name))
    return caught.value


async def test_declared_field_rules_are_checked_before_the_handler(
    stub: pb_grpc.AnomalyServiceStub,
) -> None:
    # "bad" would make the handler answer its own violation: the rules answer first.
    err = await status_of(stub, "", pb.ScorePointsRequest(name="-", version="01"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err)
    bad = error_details_pb2.BadRequest()
    assert status is not None
    assert status.details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["name", "points", "version"]
    assert "starting with a letter or digit" in bad.field_violations[0].description


async def test_bad_input_carries_field_violations(stub: pb_grpc.AnomalyServiceStub) -> None:
    err = await status_of(stub, "bad")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err)
    bad = error_details_pb2.BadRequest()
    assert status is not None
    assert status.details[0].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("points[0].values", "contains NaN")
    ]


async def test_domain_errors_map_to_their_codes(stub: pb_grpc.AnomalyServiceStub) -> None:
    assert (await status_of(stub, "missing")).code() == grpc.StatusCode.NOT_FOUND
    big = await status_of(stub, "big")
    assert big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(big)
    assert status is not None
    assert status.details[0].Unpack(info)
    assert info.reason == "REQUEST_TOO_LARGE"


async def test_an_unexpected_error_is_internal_and_says_nothing(
    stub: pb_grpc.AnomalyServiceStub,
) -> None:
    err = await status_of(stub, "bug")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == INTERNAL_MESSAGE
    assert "hunter2" not in str(err.debug_error_string())


async def test_a_stream_error_after_a_message_keeps_its_code(
    stub: pb_grpc.AnomalyServiceStub,
) -> None:
    call = stub.WatchAnomalies(pb.WatchAnomaliesRequest())
    assert await call.read() == pb.WatchAnomaliesResponse()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_readiness_follows_the_lifecycle_and_stop_drains(host: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest()
        assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        await host.set_serving()
        assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.SERVING
        slow = pb_grpc.AnomalyServiceStub(channel).ScorePoints(score("slow"))
        await asyncio.sleep(0.1)
        await host.stop()
        assert (await slow).threshold == 1.0  # the in-flight call finished within the grace


async def test_readiness_follows_nats_and_a_stop_without_nats_is_quiet(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    common = NexusSettings(nats_url=nats_server.url, auth_enabled=False, log_json=False)
    host = ServiceHost("test", ServiceSettings(shutdown_grace_s=0.5), common)
    await host.open()
    await host.start()
    await host.set_serving()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status_is(expected: int) -> bool:
            return (await health.Check(health_pb2.HealthCheckRequest())).status == expected

        nats_server.kill()
        await eventually(lambda: status_is(health_pb2.HealthCheckResponse.NOT_SERVING))
        nats_server.start()
        await eventually(lambda: status_is(health_pb2.HealthCheckResponse.SERVING))
        nats_server.kill()
        await eventually(lambda: status_is(health_pb2.HealthCheckResponse.NOT_SERVING))
    await host.stop()  # NATS is down: no drain to fail, nothing to log as an error

    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


class Recorder:
    """A part that notes when it starts and stops."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def start(self) -> None:
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


async def test_the_host_starts_parts_and_stops_them_newest_first_then_its_pool(
    nexus_settings: NexusSettings,
) -> None:
    log: list[str] = []
    host = ServiceHost("parts", ServiceSettings(workers=1), nexus_settings)
    await host.open()
    first = await host.manage(Recorder("store", log))
    await host.manage(Recorder("follower", log))
    assert await asyncio.wrap_future(host.executor.submit(lambda: "ran")) == "ran"
    await host.start()

    await host.stop()

    assert first.name == "store"
    assert log == ["start store", "start follower", "stop follower", "stop store"]
    with pytest.raises(RuntimeError, match="shutdown"):
        host.executor.submit(lambda: None)


_SERVE_AND_REPORT = textwrap.dedent(
    """
    import asyncio, gc, os, signal, sys
    from nexus.common.server import ServiceHost, serve
    from nexus.common.settings import NexusSettings, ServiceSettings

    built = []

    async def create(settings, common):
        host = ServiceHost("frozen", settings, common)
        await host.open()
        await host.start()
        built.append(asyncio.Event())  # a tracked object
        asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)
        return host

    common = NexusSettings(nats_url=sys.argv[1], auth_enabled=False, log_json=False)
    asyncio.run(serve(create, ServiceSettings(grpc_port=0, metrics_port=0), common))
    young = {id(o) for g in range(3) for o in gc.get_objects(g)}
    print(gc.get_freeze_count(), gc.is_tracked(built[0]) and id(built[0]) not in young)
    """
)


def test_a_service_process_freezes_its_heap_once_started(nexus_settings: NexusSettings) -> None:
    """`serve` (a service's own process) moves the modules and what starting built out of the
    collector's reach; an object made in `create` is frozen too."""
    ran = subprocess.run(
        [sys.executable, "-c", _SERVE_AND_REPORT, nexus_settings.nats_url],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    frozen, made_in_create_frozen = ran.stdout.split()
    assert int(frozen) > 10_000
    assert made_in_create_frozen == "True"
