"""Training as a long-running operation: started at once, watched through its stages, done
with the registered version; bad input refused at the start."""

from __future__ import annotations

import grpc
import pytest
from anomaly_testing import Client, cloud, points, unique

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.operations.v1 import operations_pb2 as ops_pb

pytestmark = pytest.mark.timeout(120)


async def test_a_started_training_reports_its_stages_and_ends_with_its_version(
    client: Client,
) -> None:
    name = unique()
    training = pb.TrainDetectorRequest(
        name=name, algorithm=pb.ALGORITHM_ISOLATION_FOREST, points=points(cloud(300, 3))
    )
    started = await client.anomaly.StartTrainDetector(
        pb.StartTrainDetectorRequest(training=training), metadata=client.metadata
    )
    assert started.operation.name.startswith("anomaly/operations/")
    assert started.operation.state == ops_pb.OPERATION_STATE_QUEUED

    stream = client.operations.WatchOperation(
        ops_pb.WatchOperationRequest(name=started.operation.name), metadata=client.metadata
    )
    seen = [reply.operation async for reply in stream]

    done = seen[-1]
    assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED, done.error
    trained = pb.TrainDetectorResponse()
    assert done.response.Unpack(trained)
    assert trained.version.name == name
    assert trained.version.version == "1"
    assert done.progress.metrics["train_rows"] == 240.0
    assert done.progress.stage == "registering"
    model = await client.models.GetModel(
        models_pb.GetModelRequest(service="anomaly", name=name), metadata=client.metadata
    )
    assert [v.version for v in model.model.versions] == ["1"]


async def test_bad_training_input_is_refused_when_started(client: Client) -> None:
    for training in (
        pb.TrainDetectorRequest(name=unique()),  # no data
        pb.TrainDetectorRequest(name="bad name", points=points(cloud(50, 2))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.anomaly.StartTrainDetector(
                pb.StartTrainDetectorRequest(training=training), metadata=client.metadata
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.anomaly.StartTrainDetector(
            pb.StartTrainDetectorRequest(), metadata=client.metadata
        )
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
