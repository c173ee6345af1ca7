"""The VisionService RPCs: each converts the request, calls the engine, converts the result.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.api.vision.v1 import vision_service_pb2_grpc as pb_grpc
from nexus.common.errors import InvalidArgument
from nexus.common.operations import OperationKind, Operations, Progress
from nexus.common.operations.converters import operation_to_proto
from nexus.vision import converters as conv
from nexus.vision.engine import VisionEngine

Context = Any  # grpc.aio.ServicerContext; unused by most handlers
TRAIN = "train"
"""The kind of the operations StartTraining starts."""


def training(engine: VisionEngine) -> OperationKind[pb.TrainRequest, pb.TrainResponse]:
    """A training as a kind of long-running operation."""

    async def train(request: pb.TrainRequest, progress: Progress) -> pb.TrainResponse:
        trained = await engine.train(conv.train_spec(request), progress)
        return conv.trained_to_proto(trained)

    return OperationKind(TRAIN, pb.TrainRequest, train)


class VisionServicer(pb_grpc.VisionServiceServicer):
    """gRPC face of the vision engine."""

    def __init__(self, engine: VisionEngine, operations: Operations) -> None:
        self._engine = engine
        self._operations = operations

    # YOLO models.

    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        pictures = await self._engine.decode_all(request.images)
        prediction = await self._engine.predict(
            request.model,
            pictures,
            conv.options_from_proto(request.options),
            conv.selector_from_proto(request.selector),
        )
        return conv.prediction_to_proto(prediction, list(request.images_filename))

    async def PredictStream(
        self, request_iterator: AsyncIterator[pb.PredictStreamRequest], context: Context
    ) -> AsyncIterator[pb.PredictStreamResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if not first.model:
            raise InvalidArgument.for_field("model", "is required on the first message")
        results = self._engine.predict_frames(
            first.model,
            _frames(first, request_iterator),
            conv.options_from_proto(first.options),
            conv.selector_from_proto(first.selector),
        )
        async for frame_id, prediction in results:
            yield conv.frame_to_proto(frame_id, prediction)

    async def Annotate(self, request: pb.AnnotateRequest, context: Context) -> pb.AnnotateResponse:
        annotated = await self._engine.annotate(
            request.model,
            request.image,
            conv.options_from_proto(request.options),
            conv.selector_from_proto(request.selector),
            conv.image_format(request.format),
        )
        return conv.annotated_to_proto(annotated, request.image_filename)

    # Faces, text, enhancement.

    async def DetectFaces(
        self, request: pb.DetectFacesRequest, context: Context
    ) -> pb.DetectFacesResponse:
        results = await self._engine.detect_faces(list(request.images), request.min_size)
        return conv.faces_to_proto(results)

    async def ReadText(self, request: pb.ReadTextRequest, context: Context) -> pb.ReadTextResponse:
        results = await self._engine.read_text(list(request.images), request.min_confidence)
        return conv.text_to_proto(results)

    async def Enhance(self, request: pb.EnhanceRequest, context: Context) -> pb.EnhanceResponse:
        operations = conv.enhance_operations(request.operations)
        fmt = conv.image_format(request.format)
        data = await self._engine.enhance(request.image, operations, fmt)
        return conv.enhanced_to_proto(data, fmt)

    # Datasets and training.

    async def UploadDataset(
        self, request: pb.UploadDatasetRequest, context: Context
    ) -> pb.UploadDatasetResponse:
        info = await self._engine.upload_dataset(request.name, request.archive)
        return pb.UploadDatasetResponse(dataset=conv.dataset_to_proto(info))

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: Context
    ) -> pb.GetDatasetResponse:
        info = await self._engine.get_dataset(request.id)
        return pb.GetDatasetResponse(dataset=conv.dataset_to_proto(info))

    async def StartTraining(
        self, request: pb.StartTrainingRequest, context: Context
    ) -> pb.StartTrainingResponse:
        spec = conv.train_spec(request.train)  # bad input fails here, not in the operation
        await self._engine.check_training(spec)
        operation = await self._operations.submit(TRAIN, request.train)
        return pb.StartTrainingResponse(operation=operation_to_proto(operation))


async def _frames(
    first: pb.PredictStreamRequest, rest: AsyncIterator[pb.PredictStreamRequest]
) -> AsyncIterator[tuple[str, bytes]]:
    """(frame id, image) of every message; a later one may only repeat the model."""
    yield first.frame_id, first.image
    async for message in rest:
        if message.model and message.model != first.model:
            raise InvalidArgument.for_field("model", "must not change within a stream")
        yield message.frame_id, message.image
