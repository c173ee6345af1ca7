"""A replica SIGKILLed in the middle of a training operation: the operation goes to the next
replica after the ack wait, runs again there, and ends SUCCEEDED with exactly one version. And
NATS killed while trainings are queued and running: each ends SUCCEEDED once, one version each."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from anomaly_testing import Client, cloud, points, unique

from nexus.anomaly.server import create
from nexus.anomaly.settings import AnomalySettings
from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.common.testing.launcher import StartPlatform
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.timeout(300)


def training(name: str, rows: int, columns: int, trees: int) -> pb.StartTrainDetectorRequest:
    """An isolation forest of `trees` trees trained on `rows` points of `columns` values."""
    request = pb.TrainDetectorRequest(
        name=name,
        algorithm=pb.ALGORITHM_ISOLATION_FOREST,
        points=points(cloud(rows, columns)),
        parameters={"n_estimators": str(trees)},
    )
    return pb.StartTrainDetectorRequest(training=request)


def slow_training(name: str) -> pb.StartTrainDetectorRequest:
    """A training that runs for seconds (many trees), long enough to be killed in."""
    return training(name, 3000, 8, 1500)


async def test_a_training_whose_replica_is_killed_completes_on_another_with_one_version(
    start_platform: StartPlatform,
) -> None:
    platform = await start_platform("anomaly", NEXUS_ANOMALY_OPERATIONS_ACK_WAIT_S="2")
    first = platform.children[0]
    name = unique()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        client = Client(channel, "")
        started = await client.anomaly.StartTrainDetector(slow_training(name))
        operation = started.operation.name

        async def fitting() -> bool:
            request = ops_pb.GetOperationRequest(name=operation)
            got = (await client.operations.GetOperation(request)).operation
            return got.progress.stage == "fitting"

        await eventually(fitting, timeout_s=60)
    first.process.kill()  # SIGKILL mid-fit: no goodbye, no heartbeat, no ack
    first.process.wait(10)
    platform.children.remove(first)
    await platform.start_services()
    second = platform.children[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        client = Client(channel, "")
        stream = client.operations.WatchOperation(
            ops_pb.WatchOperationRequest(name=operation), timeout=240
        )
        done = [reply.operation async for reply in stream][-1]
        model = await client.models.GetModel(
            models_pb.GetModelRequest(service="anomaly", name=name)
        )
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    assert done.attempt == 2
    trained = pb.TrainDetectorResponse()
    assert done.response.Unpack(trained)
    assert trained.version.version == "1"
    assert [v.version for v in model.model.versions] == ["1"]


async def test_trainings_queued_and_running_when_nats_crashes_each_end_once(
    nats_server: NatsServer, start_service: StartService
) -> None:
    common = NexusSettings(nats_url=nats_server.url, registry_signing_key="k", auth_enabled=False)
    # Work in flight when NATS died comes again after the ack wait: keep it short.
    settings = AnomalySettings(grpc_port=0, operations_ack_wait_s=2.0)
    host = await start_service(create, settings, common)
    names = [unique() for _ in range(6)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        client = Client(channel, "")
        started = [
            (await client.anomaly.StartTrainDetector(quick_training(name))).operation.name
            for name in names
        ]
        nats_server.kill()  # some queued, one running: no ack, no heartbeat, no goodbye
        await asyncio.sleep(0.5)
        await asyncio.to_thread(nats_server.start)

        async def all_done() -> bool:
            states = [await operation_state(client, name) for name in started]
            return all(state in ENDED for state in states)

        await eventually(all_done, timeout_s=120)
        ended = [await operation_state(client, name) for name in started]
        versions = [
            [v.version for v in (await client.models.GetModel(model_request(n))).model.versions]
            for n in names
        ]

    assert ended == [ops_pb.OPERATION_STATE_SUCCEEDED] * len(names)
    assert versions == [["1"]] * len(names)  # each training applied once


ENDED = frozenset(
    {
        ops_pb.OPERATION_STATE_SUCCEEDED,
        ops_pb.OPERATION_STATE_FAILED,
        ops_pb.OPERATION_STATE_CANCELLED,
    }
)


def quick_training(name: str) -> pb.StartTrainDetectorRequest:
    return training(name, 500, 4, 200)


def model_request(name: str) -> models_pb.GetModelRequest:
    return models_pb.GetModelRequest(service="anomaly", name=name)


async def operation_state(client: Client, name: str) -> int:
    """The operation's state; UNSPECIFIED while NATS does not answer yet."""
    try:
        reply = await client.operations.GetOperation(ops_pb.GetOperationRequest(name=name))
    except grpc.aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return int(ops_pb.OPERATION_STATE_UNSPECIFIED)
        raise
    return int(reply.operation.state)
