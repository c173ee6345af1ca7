"""ModelRegistryServicer over a real grpc.aio server and channel, on a real JetStream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from nats.aio.client import Client

from nexus.api.models.v1 import model_registry_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2_grpc as pb_grpc
from nexus.common.errors import NexusError
from nexus.common.events import EventBus
from nexus.common.registry import ModelRegistry
from nexus.common.registry.servicer import ModelRegistryServicer

pytestmark = pytest.mark.integration

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class NexusErrorsToStatus(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A stand-in for the platform's error interceptor: NexusError -> its status code."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _mapped(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _mapped(behavior: Behavior) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except NexusError as err:
            await context.abort(getattr(grpc.StatusCode, err.code.name), err.message)

    return call


@pytest.fixture
def service() -> str:
    return f"t{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def registry(nats_client: Client, service: str) -> AsyncIterator[ModelRegistry]:
    registry = ModelRegistry(
        EventBus(nats_client, f"nexus/{service}"),
        service,
        signing_key=b"k",
        upload_frameworks=("onnx",),
    )
    await registry.start()
    yield registry
    await registry.stop()


@pytest.fixture
async def stub(registry: ModelRegistry) -> AsyncIterator[pb_grpc.ModelRegistryServiceAsyncStub]:
    server = grpc.aio.server(interceptors=[NexusErrorsToStatus()])
    pb_grpc.add_ModelRegistryServiceServicer_to_server(ModelRegistryServicer(registry), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.ModelRegistryServiceStub(channel)  # type: ignore[misc]
    await server.stop(None)


async def upload(stub: pb_grpc.ModelRegistryServiceAsyncStub, service: str, name: str) -> str:
    request = pb.UploadModelRequest(
        service=service, name=name, framework="onnx", artifact=b"bytes", metrics={"auc": 0.9}
    )
    response: pb.UploadModelResponse = await stub.UploadModel(request)
    return response.version.version


async def test_upload_get_promote_split_and_delete(
    stub: pb_grpc.ModelRegistryServiceAsyncStub, service: str
) -> None:
    assert [await upload(stub, service, "m") for _ in range(3)] == ["1", "2", "3"]
    promoted = await stub.PromoteModel(
        pb.PromoteModelRequest(service=service, name="m", version="1")
    )
    assert promoted.alias.alias == "production"
    assert [(s.version, s.weight) for s in promoted.alias.splits] == [("1", 100)]
    split = await stub.SetTrafficSplit(
        pb.SetTrafficSplitRequest(
            service=service,
            name="m",
            alias="staging",
            splits=[pb.TrafficSplit(version="2", weight=3), pb.TrafficSplit(version="1", weight=1)],
        )
    )
    assert [(s.version, s.weight) for s in split.alias.splits] == [("1", 1), ("2", 3)]
    await stub.DeleteModelVersion(
        pb.DeleteModelVersionRequest(service=service, name="m", version="3")
    )

    model = (await stub.GetModel(pb.GetModelRequest(service=service, name="m"))).model
    assert (model.name, model.latest_version) == ("m", "2")
    assert [v.version for v in model.versions] == ["1", "2"]
    assert list(model.versions[0].aliases) == ["production", "staging"]
    assert dict(model.versions[0].metrics) == {"auc": 0.9}
    assert model.versions[0].create_time.seconds > 0
    assert [a.alias for a in model.aliases] == ["production", "staging"]

    await stub.DeleteModel(pb.DeleteModelRequest(service=service, name="m"))
    listed = await stub.ListModels(pb.ListModelsRequest(service=service))
    assert list(listed.models) == []


async def test_list_models_pages(stub: pb_grpc.ModelRegistryServiceAsyncStub, service: str) -> None:
    for name in ("b", "a", "c"):
        await upload(stub, service, name)
    first = await stub.ListModels(pb.ListModelsRequest(page_size=2))  # empty service: this one
    second = await stub.ListModels(
        pb.ListModelsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert [m.name for m in first.models] == ["a", "b"]
    assert ([m.name for m in second.models], second.next_page_token) == (["c"], "")


async def test_another_service_is_refused(stub: pb_grpc.ModelRegistryServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListModels(pb.ListModelsRequest(service="vision"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not 'vision'" in (caught.value.details() or "")


async def test_domain_errors_reach_the_client_as_statuses(
    stub: pb_grpc.ModelRegistryServiceAsyncStub, service: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModel(pb.GetModelRequest(service=service, name="missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await upload(stub, service, "m")
    await stub.PromoteModel(pb.PromoteModelRequest(service=service, name="m", version="1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteModelVersion(pb.DeleteModelVersionRequest(name="m", version="1"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
