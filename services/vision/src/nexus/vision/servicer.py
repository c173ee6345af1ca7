"""The VisionService RPCs: each converts the request, calls the engine, converts the result.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from typing import Any

from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.api.vision.v1 import vision_service_pb2_grpc as pb_grpc
from nexus.common.operations import OperationKind, Operations, Progress
from nexus.common.operations.converters import operation_to_proto
from nexus.vision import converters
from nexus.vision.engine import VisionEngine

Context = Any  # grpc.aio.ServicerContext; unused by most handlers
TRAIN = "train"
"""The kind of the operations StartTraining starts."""


def training(engine: VisionEngine) -> OperationKind[pb.TrainRequest, pb.TrainResponse]:
    """A training as a kind of long-running operation."""

    async def train(request: pb.TrainRequest, progress: Progress) -> pb.TrainResponse:
        trained = await engine.train(converters.train_spec(request), progress)
        return converters.trained_to_proto(trained)

    return OperationKind(TRAIN, pb.TrainRequest, train)


class VisionServicer(pb_grpc.VisionServiceServicer):
    """gRPC face of the vision engine."""

    def __init__(self, engine: VisionEngine, operations: Operations) -> None:
        self._engine = engine
        self._operations = operations

    # Datasets and training.

    async def UploadDataset(
        self, request: pb.UploadDatasetRequest, context: Context
    ) -> pb.UploadDatasetResponse:
        info = await self._engine.upload_dataset(request.name, request.archive)
        return pb.UploadDatasetResponse(dataset=converters.dataset_to_proto(info))

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: Context
    ) -> pb.GetDatasetResponse:
        info = await self._engine.get_dataset(request.id)
        return pb.GetDatasetResponse(dataset=converters.dataset_to_proto(info))

    async def StartTraining(
        self, request: pb.StartTrainingRequest, context: Context
    ) -> pb.StartTrainingResponse:
        spec = converters.train_spec(request.train)  # bad input fails here, not in the operation
        await self._engine.check_training(spec)
        operation = await self._operations.submit(TRAIN, request.train)
        return pb.StartTrainingResponse(operation=operation_to_proto(operation))
