"""The nexus.operations.v1.OperationsService of one service: thin, over `Operations`.

Each RPC converts, delegates and converts back; errors are `nexus.common.errors` exceptions,
which the server's error interceptor maps to statuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from nexus.api.operations.v1 import operations_pb2 as pb
from nexus.api.operations.v1 import operations_pb2_grpc as pb_grpc
from nexus.common.errors import InvalidArgument
from nexus.common.operations._operations import Operations
from nexus.common.operations.converters import operation_to_proto, state_from_proto

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
SERVICE_NAME = "nexus.operations.v1.OperationsService"


class OperationsServicer(pb_grpc.OperationsServiceServicer):
    """Serves one service's `Operations` over gRPC (grpc.aio).

    Args:
        operations: The service's operations.
    """

    def __init__(self, operations: Operations) -> None:
        self._operations = operations

    async def ListOperations(
        self, request: pb.ListOperationsRequest, context: Context
    ) -> pb.ListOperationsResponse:
        if request.name != self._operations.service:
            raise InvalidArgument.for_field(
                "name", f"this is the {self._operations.service} service, not {request.name!r}"
            )
        records, token = await self._operations.list_operations(
            state=state_from_proto(request.state),
            kind=request.kind,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListOperationsResponse(
            operations=[operation_to_proto(r) for r in records], next_page_token=token
        )

    async def GetOperation(
        self, request: pb.GetOperationRequest, context: Context
    ) -> pb.GetOperationResponse:
        record = await self._operations.get(request.name)
        return pb.GetOperationResponse(operation=operation_to_proto(record))

    async def CancelOperation(
        self, request: pb.CancelOperationRequest, context: Context
    ) -> pb.CancelOperationResponse:
        record = await self._operations.cancel(request.name)
        return pb.CancelOperationResponse(operation=operation_to_proto(record))

    async def WatchOperation(
        self, request: pb.WatchOperationRequest, context: Context
    ) -> AsyncIterator[pb.WatchOperationResponse]:
        async for record in self._operations.watch(request.name):
            yield pb.WatchOperationResponse(operation=operation_to_proto(record))
