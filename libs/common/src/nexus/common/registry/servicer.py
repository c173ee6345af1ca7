"""The nexus.models.v1.ModelRegistryService of one service: thin, over `ModelRegistry`.

Each RPC checks that the request is for this service, converts, delegates and converts back.
Errors are `nexus.common.errors` exceptions, which the server's error interceptor maps to gRPC
statuses; nothing is caught here.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from nexus.api.models.v1 import model_registry_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2_grpc as pb_grpc
from nexus.common.errors import InvalidArgument
from nexus.common.registry._registry import ModelRegistry
from nexus.common.registry._types import DEFAULT_ALIAS
from nexus.common.registry.converters import (
    alias_to_proto,
    model_to_proto,
    splits_from_proto,
    version_to_proto,
)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class ModelRegistryServicer(pb_grpc.ModelRegistryServiceServicer):
    """Serves one service's `ModelRegistry` over gRPC (grpc.aio).

    Args:
        registry: The service's started registry.
    """

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        self._check_service(request.service)
        models, token = await self._registry.list_models(request.page_size, request.page_token)
        return pb.ListModelsResponse(
            models=[model_to_proto(m) for m in models], next_page_token=token
        )

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.GetModelResponse:
        self._check_service(request.service)
        model = await self._registry.get_model(request.name)
        return pb.GetModelResponse(model=model_to_proto(model))

    async def UploadModel(
        self, request: pb.UploadModelRequest, context: Context
    ) -> pb.UploadModelResponse:
        self._check_service(request.service)
        info = await self._registry.upload(
            request.name,
            request.artifact,
            framework=request.framework,
            metrics=dict(request.metrics),
            parameters=dict(request.parameters),
            description=request.description,
        )
        return pb.UploadModelResponse(version=version_to_proto(info))

    async def PromoteModel(
        self, request: pb.PromoteModelRequest, context: Context
    ) -> pb.PromoteModelResponse:
        self._check_service(request.service)
        alias = request.alias or DEFAULT_ALIAS
        info = await self._registry.promote(request.name, request.version, alias)
        return pb.PromoteModelResponse(alias=alias_to_proto(info))

    async def SetTrafficSplit(
        self, request: pb.SetTrafficSplitRequest, context: Context
    ) -> pb.SetTrafficSplitResponse:
        self._check_service(request.service)
        splits = splits_from_proto(request.splits)
        info = await self._registry.set_traffic_split(request.name, request.alias, splits)
        return pb.SetTrafficSplitResponse(alias=alias_to_proto(info))

    async def DeleteModelVersion(
        self, request: pb.DeleteModelVersionRequest, context: Context
    ) -> pb.DeleteModelVersionResponse:
        self._check_service(request.service)
        await self._registry.delete_version(request.name, request.version)
        return pb.DeleteModelVersionResponse()

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: Context
    ) -> pb.DeleteModelResponse:
        self._check_service(request.service)
        await self._registry.delete_model(request.name)
        return pb.DeleteModelResponse()

    def _check_service(self, service: str) -> None:
        """A service answers only for its own models; empty means this one."""
        if service and service != self._registry.service:
            raise InvalidArgument.for_field(
                "service", f"this is the {self._registry.service} service, not {service!r}"
            )
