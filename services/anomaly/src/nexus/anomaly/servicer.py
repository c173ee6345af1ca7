"""The AnomalyService RPCs: each converts the request, calls the engine, converts the result.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nexus.anomaly import converters
from nexus.anomaly.engine import AnomalyEngine
from nexus.anomaly.sources import SourceBindings
from nexus.anomaly.streaming import StreamProcessor
from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as pb_grpc
from nexus.common.errors import InvalidArgument
from nexus.common.names import check_name
from nexus.common.operations import OperationKind, Operations, Progress
from nexus.common.operations.converters import operation_to_proto
from nexus.common.paging import page_request, paginate

Context = Any  # grpc.aio.ServicerContext; unused by these handlers
TRAIN_DETECTOR = "train_detector"
"""The kind of the operations StartTrainDetector starts."""


def training(
    engine: AnomalyEngine,
) -> OperationKind[pb.TrainDetectorRequest, pb.TrainDetectorResponse]:
    """Training as a kind of long-running operation: what TrainDetector does, with progress."""

    async def train(
        request: pb.TrainDetectorRequest, progress: Progress
    ) -> pb.TrainDetectorResponse:
        spec = converters.train_spec(request, engine)
        return converters.trained_to_proto(await engine.train(spec, progress))

    return OperationKind(TRAIN_DETECTOR, pb.TrainDetectorRequest, train)


class AnomalyServicer(pb_grpc.AnomalyServiceServicer):
    """gRPC face of the anomaly engine."""

    def __init__(
        self,
        engine: AnomalyEngine,
        bindings: SourceBindings,
        stream: StreamProcessor,
        operations: Operations,
    ) -> None:
        self._engine = engine
        self._bindings = bindings
        self._stream = stream
        self._operations = operations

    async def UploadDataset(
        self, request: pb.UploadDatasetRequest, context: Context
    ) -> pb.UploadDatasetResponse:
        data = converters.upload_data(request, self._engine)
        return converters.dataset_to_proto(await self._engine.upload_dataset(request.name, data))

    async def TrainDetector(
        self, request: pb.TrainDetectorRequest, context: Context
    ) -> pb.TrainDetectorResponse:
        spec = converters.train_spec(request, self._engine)
        return converters.trained_to_proto(await self._engine.train(spec))

    async def StartTrainDetector(
        self, request: pb.StartTrainDetectorRequest, context: Context
    ) -> pb.StartTrainDetectorResponse:
        converters.train_spec(request.training, self._engine)  # bad input fails here, not later
        operation = await self._operations.submit(TRAIN_DETECTOR, request.training)
        return pb.StartTrainDetectorResponse(operation=operation_to_proto(operation))

    async def ScorePoints(
        self, request: pb.ScorePointsRequest, context: Context
    ) -> pb.ScorePointsResponse:
        rows = self._engine.validate_rows(converters.rows_of(request.points), "points")
        scored = await self._engine.score(request.name, rows, converters.selector(request))
        return converters.scored_to_proto(request.points, scored)

    async def ExplainPoint(
        self, request: pb.ExplainPointRequest, context: Context
    ) -> pb.ExplainPointResponse:
        if not request.HasField("point"):
            raise InvalidArgument.for_field("point", "is required")
        row = self._engine.validate_point(list(request.point.values), "point.values")
        explained = await self._engine.explain(request.name, row, converters.selector(request))
        return converters.explained_to_proto(explained)

    async def BindSource(
        self, request: pb.BindSourceRequest, context: Context
    ) -> pb.BindSourceResponse:
        binding = await self._bindings.bind(
            request.source, request.detector, request.alias, converters.streaming_of(request)
        )
        return pb.BindSourceResponse(binding=converters.binding_to_proto(binding))

    async def UnbindSource(
        self, request: pb.UnbindSourceRequest, context: Context
    ) -> pb.UnbindSourceResponse:
        await self._bindings.unbind(request.source)
        return pb.UnbindSourceResponse()

    async def ListSources(
        self, request: pb.ListSourcesRequest, context: Context
    ) -> pb.ListSourcesResponse:
        page = page_request(request.page_size, request.page_token, scope="sources")
        bindings, token = paginate(self._bindings.list(), lambda b: b.source, page)
        return pb.ListSourcesResponse(
            bindings=[converters.binding_to_proto(b) for b in bindings], next_page_token=token
        )

    async def WatchAnomalies(
        self, request: pb.WatchAnomaliesRequest, context: Context
    ) -> AsyncIterator[pb.WatchAnomaliesResponse]:
        source = check_name(request.source, "source") if request.source else ""
        async for anomaly in self._stream.watch(source):
            yield pb.WatchAnomaliesResponse(anomaly=anomaly)
