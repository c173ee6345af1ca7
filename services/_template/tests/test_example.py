"""The example service: its servicer alone (no network), then over real gRPC with a real NATS
and a real API key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus.api.example.v1 import example_service_pb2 as pb
from nexus.api.example.v1 import example_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.errors import ResourceExhausted
from nexus.common.testing.services import StartService
from nexus.example.counting import WordCounter
from nexus.example.server import create
from nexus.example.servicer import ExampleServicer
from nexus.example.settings import ExampleSettings

Metadata = tuple[tuple[str, str], ...]


async def test_the_servicer_converts_and_delegates() -> None:
    with ThreadPoolExecutor(1) as pool:
        servicer = ExampleServicer(WordCounter(ExampleSettings(max_text_chars=5), pool))
        reply = await servicer.CountWords(pb.CountWordsRequest(texts=["a b"]), context=None)
        with pytest.raises(ResourceExhausted):
            await servicer.CountWords(pb.CountWordsRequest(texts=["abcdef"]), context=None)

    assert [(c.words, c.characters) for c in reply.counts] == [(2, 3)]


@pytest.fixture
async def example(start_service: StartService) -> ServiceHost:
    return await start_service(create, ExampleSettings(grpc_port=0, max_texts=3))


@pytest.fixture
async def channel(example: ServiceHost) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{example.port}") as channel:
        yield channel


@pytest.fixture
async def auth(nexus_settings: NexusSettings) -> Metadata:
    return (("authorization", f"Bearer {await make_key(nexus_settings, 'example:invoke')}"),)


async def test_it_is_serving_and_counts_words(channel: grpc.aio.Channel, auth: Metadata) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=""))
    reply = await pb_grpc.ExampleServiceStub(channel).CountWords(
        pb.CountWordsRequest(texts=["one two  three", ""]), metadata=auth
    )

    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert [(c.words, c.characters) for c in reply.counts] == [(3, 14), (0, 0)]


@pytest.mark.parametrize(
    ("texts", "code"),
    [([], grpc.StatusCode.INVALID_ARGUMENT), (["a"] * 4, grpc.StatusCode.RESOURCE_EXHAUSTED)],
)
async def test_bad_input_gets_a_clear_status(
    channel: grpc.aio.Channel, auth: Metadata, texts: list[str], code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pb_grpc.ExampleServiceStub(channel).CountWords(
            pb.CountWordsRequest(texts=texts), metadata=auth
        )

    assert caught.value.code() == code
    assert "texts" in (caught.value.details() or "")


async def test_a_key_without_the_scope_is_refused(
    channel: grpc.aio.Channel, nexus_settings: NexusSettings
) -> None:
    key = await make_key(nexus_settings, "models:read")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pb_grpc.ExampleServiceStub(channel).CountWords(
            pb.CountWordsRequest(texts=["a"]), metadata=(("authorization", f"Bearer {key}"),)
        )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
