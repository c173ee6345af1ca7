"""A vision training survives its replica's death: two replicas on one NATS, the one running
the training SIGKILLed mid-training; the other runs it again after the ack wait and it ends
SUCCEEDED on attempt 2 with exactly one registered version."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from training_testing import dataset_files, upload, zip_of
from vision_testing import Client

from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.common.testing.launcher import StartPlatform
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.timeout(400)


def training(dataset_id: str) -> pb.StartTrainingRequest:
    """A training long enough (tens of seconds here) to start a second replica in."""
    train = pb.TrainRequest(
        name="killed", dataset_id=dataset_id, epochs=40, image_size=64, batch_size=8, patience=100
    )
    return pb.StartTrainingRequest(train=train)


async def test_a_training_whose_replica_is_killed_ends_on_the_other_with_one_version(
    start_platform: StartPlatform, tmp_path: Path
) -> None:
    platform = await start_platform(
        "vision", NEXUS_VISION_OPERATIONS_ACK_WAIT_S="2", NEXUS_VISION_DEVICE="cpu"
    )
    first = platform.children[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        client = Client(channel, "")
        archive = zip_of(dataset_files(tmp_path / "d", train=16, val=4, size=64))
        dataset = await upload(client, archive)
        started = await client.vision.StartTraining(training(dataset.id))
        operation = started.operation.name

        async def training_on_first() -> bool:
            got = await client.operations.GetOperation(ops_pb.GetOperationRequest(name=operation))
            return got.operation.progress.metrics.get("epoch", 0) >= 1

        await eventually(training_on_first, timeout_s=120)
    await platform.start_services()  # the second replica, while the first trains
    second = platform.children[1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        client = Client(channel, "")
        request = ops_pb.GetOperationRequest(name=operation)
        before = (await client.operations.GetOperation(request)).operation
        first.process.kill()  # SIGKILL mid-training: no goodbye, no heartbeat, no ack
        first.process.wait(10)
        stream = client.operations.WatchOperation(
            ops_pb.WatchOperationRequest(name=operation), timeout=300
        )
        done = [reply.operation async for reply in stream][-1]
        model = await client.models.GetModel(
            models_pb.GetModelRequest(service="vision", name="killed")
        )
    assert before.state == ops_pb.OPERATION_STATE_RUNNING  # the first was still training
    assert before.attempt == 1
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    assert done.attempt == 2
    trained = pb.TrainResponse()
    assert done.response.Unpack(trained)
    assert trained.version == "1"
    assert [v.version for v in model.model.versions] == ["1"]
