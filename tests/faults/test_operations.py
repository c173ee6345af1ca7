"""A replica SIGKILLed in the middle of a training operation: the operation goes to the next
replica after the ack wait, runs again there, and ends SUCCEEDED with exactly one version."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from anomaly_testing import Client, cloud, points, unique

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.common.launcher import Platform
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.timeout(300)


def slow_training(name: str) -> pb.StartTrainDetectorRequest:
    """A training that runs for seconds (many trees), long enough to be killed in."""
    training = pb.TrainDetectorRequest(
        name=name,
        algorithm=pb.ALGORITHM_ISOLATION_FOREST,
        points=points(cloud(3000, 8)),
        parameters={"n_estimators": "1500"},
    )
    return pb.StartTrainDetectorRequest(training=training)


async def test_a_training_whose_replica_is_killed_completes_on_another_with_one_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_AUTH_ENABLED", "false")
    monkeypatch.setenv("NEXUS_ANOMALY_OPERATIONS_ACK_WAIT_S", "2")
    platform = Platform(tmp_path, nats_port=0, gateway_port=0, services=["anomaly"])
    try:
        await platform.start_nats()
        await platform.start_services()
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
    finally:
        platform.stop()
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    assert done.attempt == 2
    trained = pb.TrainDetectorResponse()
    assert done.response.Unpack(trained)
    assert trained.version.version == "1"
    assert [v.version for v in model.model.versions] == ["1"]
