"""The VisionService RPCs: each converts the request, calls the engine, converts the result.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from typing import Any

from nexus.api.vision.v1 import vision_service_pb2 as pb
from nexus.api.vision.v1 import vision_service_pb2_grpc as pb_grpc
from nexus.common.operations import Operations
from nexus.vision import converters
from nexus.vision.engine import VisionEngine

Context = Any  # grpc.aio.ServicerContext; unused by most handlers


class VisionServicer(pb_grpc.VisionServiceServicer):
    """gRPC face of the vision engine."""

    def __init__(self, engine: VisionEngine, operations: Operations) -> None:
        self._engine = engine
        self._operations = operations

    # Faces, text, enhancement.

    async def DetectFaces(
        self, request: pb.DetectFacesRequest, context: Context
    ) -> pb.DetectFacesResponse:
        results = await self._engine.detect_faces(list(request.images), request.min_size)
        return converters.faces_to_proto(results)

    async def ReadText(self, request: pb.ReadTextRequest, context: Context) -> pb.ReadTextResponse:
        results = await self._engine.read_text(list(request.images), request.min_confidence)
        return converters.text_to_proto(results)

    async def Enhance(self, request: pb.EnhanceRequest, context: Context) -> pb.EnhanceResponse:
        operations = converters.enhance_operations(request.operations)
        fmt = converters.image_format(request.format)
        data = await self._engine.enhance(request.image, operations, fmt)
        return converters.enhanced_to_proto(data, fmt)
