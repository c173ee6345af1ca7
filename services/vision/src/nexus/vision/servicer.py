"""The VisionService RPCs: each converts the request, calls the engine, converts the result.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from typing import Any

from nexus.api.vision.v1 import vision_service_pb2_grpc as pb_grpc
from nexus.common.operations import Operations
from nexus.vision.engine import VisionEngine

Context = Any  # grpc.aio.ServicerContext; unused by most handlers


class VisionServicer(pb_grpc.VisionServiceServicer):
    """gRPC face of the vision engine."""

    def __init__(self, engine: VisionEngine, operations: Operations) -> None:
        self._engine = engine
        self._operations = operations
