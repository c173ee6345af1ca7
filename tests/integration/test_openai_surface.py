"""The official `openai` client against Nexus: gateway -> llm service (a tiny local model, the
local embedding model) -> NATS, with real keys, unchanged client code."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
import yaml
from llm_testing import TINY_MODEL_NAME, build_tiny_model, counting
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nexus.common.auth import open_key_store
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.telemetry import setup_tracing
from nexus.common.testing.keys import make_key
from nexus.gateway import GatewayServer, GatewaySettings, build_app
from nexus.llm.server import create
from nexus.llm.settings import LlmSettings

pytestmark = pytest.mark.integration

MAX_BODY_BYTES = 64 * 1024
EMBEDDER = LlmSettings().default_embedding_model
PRICE = 1e-4
"""US dollars per token, so that budgets apply."""


def prompt() -> str:
    """A user message no other test sent (the response cache is shared)."""
    return f"hello {uuid.uuid4().hex[:6]}"


def user(text: str) -> list[ChatCompletionMessageParam]:
    """One user message."""
    return [{"role": "user", "content": text}]


async def finished_span(exporter: InMemorySpanExporter, name: str, rpc: str) -> ReadableSpan:
    """The first finished span of that name and RPC method, waiting for it a little."""
    for _ in range(100):
        for span in exporter.get_finished_spans():
            if span.name == name and (span.attributes or {}).get("rpc.method") == rpc:
                return span
        await asyncio.sleep(0.05)
    raise AssertionError(f"no span {name} ({rpc}): {exporter.get_finished_spans()}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny local chat model (built here; nothing is downloaded)."""
    return Path(build_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture
async def llm_service(
    nexus_settings: NexusSettings, tiny_model: Path, tmp_path: Path
) -> AsyncIterator[ServiceHost]:
    """The llm service on a free port, serving the tiny model as `tiny`, priced per token."""
    config = {
        "local_models": {TINY_MODEL_NAME: {"path": str(tiny_model)}},
        "model_list": [
            {
                "model_name": TINY_MODEL_NAME,
                "litellm_params": {"model": f"nexus-local/{TINY_MODEL_NAME}"},
                "model_info": {"input_cost_per_token": PRICE, "output_cost_per_token": PRICE},
            }
        ],
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = LlmSettings(grpc_port=0, config_path=path, model_cache_dir=tmp_path / "models")
    host = await create(settings, nexus_settings)
    yield host
    await host.stop()


@pytest.fixture
async def gateway_url(
    llm_service: ServiceHost, nexus_settings: NexusSettings
) -> AsyncIterator[str]:
    """A gateway with real auth in front of the llm service; buckets of 2 requests, so that a
    key with its own small rate is refused at the third."""
    settings = GatewaySettings(
        port=0,
        backends={"llm": f"127.0.0.1:{llm_service.port}"},
        rate_limit_per_minute=0,
        rate_limit_burst=2,
        max_body_bytes=MAX_BODY_BYTES,
    )
    async with open_key_store(nexus_settings, "test-openai-gateway") as keys:
        server = GatewayServer(build_app(settings, keys=keys), settings)
        yield await server.start()
        await server.stop()


def client_of(url: str, key: str) -> openai.AsyncOpenAI:
    """The official client, as an application would make it (retries off: errors are asserted)."""
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture
async def client(gateway_url: str, nexus_settings: NexusSettings) -> openai.AsyncOpenAI:
    """A client with a key that may invoke the llm service."""
    return client_of(gateway_url, await make_key(nexus_settings, "llm:invoke"))


async def test_chat_completion(client: openai.AsyncOpenAI) -> None:
    text = prompt()
    raw = await client.chat.completions.with_raw_response.create(
        model=TINY_MODEL_NAME, messages=user(text), max_tokens=5, temperature=0
    )
    again = await client.chat.completions.with_raw_response.create(
        model=TINY_MODEL_NAME, messages=user(text), max_tokens=5, temperature=0
    )
    completion = raw.parse()
    choice = completion.choices[0]

    assert completion.object == "chat.completion"
    assert completion.model == TINY_MODEL_NAME
    assert (choice.message.role, choice.message.content) == ("assistant", counting(5))
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5
    assert raw.headers["x-nexus-cached"] == "false"
    assert again.headers["x-nexus-cached"] == "true"
    assert again.parse().choices[0].message.content == counting(5)


async def test_streaming_arrives_in_chunks_and_ends_with_usage(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model=TINY_MODEL_NAME,
        messages=[{"role": "user", "content": [{"type": "text", "text": prompt()}]}],
        max_completion_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]  # ends at `data: [DONE]`
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]

    assert len(texts) >= 3
    assert "".join(texts) == counting(6)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


async def test_a_stream_reports_the_cache_in_its_headers(client: openai.AsyncOpenAI) -> None:
    text = prompt()
    headers = []
    for _ in range(2):
        async with client.chat.completions.with_streaming_response.create(
            model=TINY_MODEL_NAME, messages=user(text), max_tokens=3, temperature=0, stream=True
        ) as response:
            headers.append(response.headers["x-nexus-cached"])
            [chunk async for chunk in await response.parse()]

    assert headers == ["false", "true"]


async def test_a_client_leaving_a_stream_cancels_the_backend_call(
    client: openai.AsyncOpenAI, nexus_settings: NexusSettings
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", nexus_settings, exporter=exporter)
    stream = await client.chat.completions.create(
        model=TINY_MODEL_NAME,
        messages=user(prompt()),
        max_tokens=200,
        stream=True,
        extra_headers={"X-Nexus-Cache": "disabled"},
    )
    async for _ in stream:
        break
    await stream.close()
    completion = await client.chat.completions.create(
        model=TINY_MODEL_NAME, messages=user(prompt()), max_tokens=2, temperature=0
    )

    assert completion.choices[0].message.content == counting(2)
    gateway = await finished_span(exporter, "POST /v1/chat/completions", "StreamChat")
    backend = await finished_span(exporter, "nexus.llm.v1.LlmService/StreamChat", "StreamChat")
    assert gateway.attributes["http.response.status_code"] == 499  # the client went away
    # The backend's stream ended early, cancelled, not at its 200th token.
    assert backend.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert backend.context.trace_id == gateway.context.trace_id


async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    texts = ["the cat sat on the mat", "a cat was sitting on a mat", "stock prices fell"]
    base64_reply = await client.embeddings.create(model=EMBEDDER, input=texts)  # base64 on the wire
    float_reply = await client.embeddings.create(
        model=EMBEDDER, input=texts, encoding_format="float", dimensions=384
    )
    single = await client.embeddings.create(model=EMBEDDER, input=texts[0])
    vectors = np.array([d.embedding for d in base64_reply.data])

    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(vectors, [d.embedding for d in float_reply.data], atol=1e-6)
    np.testing.assert_allclose(single.data[0].embedding, vectors[0], atol=1e-6)
    similarity = vectors @ vectors.T / np.outer(*[np.linalg.norm(vectors, axis=1)] * 2)
    assert similarity[0, 1] > similarity[0, 2]
    assert [d.index for d in base64_reply.data] == [0, 1, 2]
    assert base64_reply.usage.prompt_tokens > 0


async def test_other_dimensions_are_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model=EMBEDDER, input="x", dimensions=16)

    assert caught.value.param == "dimensions"


async def test_models(client: openai.AsyncOpenAI) -> None:
    listed = [model async for model in client.models.list()]
    tiny = await client.models.retrieve(TINY_MODEL_NAME)

    assert {TINY_MODEL_NAME, EMBEDDER} <= {m.id for m in listed}
    assert (tiny.id, tiny.object, tiny.owned_by) == (TINY_MODEL_NAME, "model", "nexus-local")
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
            "response_format.json_schema.name",
        ),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "ghost"}}},
            "tool_choice.function.name",
        ),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"store": "yes"}, "store"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"temperature": int("9" * 310)}, "temperature"),
        ({"logit_bias": {"1": -int("9" * 310)}}, "logit_bias.1"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"maxItems": int("9" * 310)}},
                    }
                ]
            },
            "tools[0].function.parameters.maxItems",
        ),
        ({"top_k": 5}, "top_k"),
    ],
)
async def test_the_llm_service_s_rules_come_back_as_400_naming_the_parameter(
    gateway_url: str, nexus_settings: NexusSettings, fields: dict[str, Any], param: str
) -> None:
    """The OpenAI surface translates; the llm service holds the rules, and its answer keeps
    OpenAI's shape."""
    key = await make_key(nexus_settings, "llm:invoke")
    body = {"model": TINY_MODEL_NAME, "messages": user("hi"), **fields}

    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        response = await http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")


async def test_an_unknown_model_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unary:
        await client.chat.completions.create(model="no-such-model", messages=user("hi"))
    with pytest.raises(openai.NotFoundError) as streamed:
        await client.chat.completions.create(
            model="no-such-model", messages=user("hi"), stream=True
        )

    assert (unary.value.code, streamed.value.code) == ("model_not_found", "model_not_found")


@pytest.mark.parametrize(
    "fields",
    [
        {"messages": []},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"messages": "hi"},
        {"temperature": "hot", "top_logprobs": 99, "store": "yes"},
        {"stream": True, "n": 5},
        {"unknown_parameter": 1},
    ],
)
async def test_an_unknown_model_is_404_before_any_other_parameter_is_checked(
    gateway_url: str, nexus_settings: NexusSettings, fields: dict[str, Any]
) -> None:
    """As OpenAI answers: the model first, then the rest."""
    key = await make_key(nexus_settings, "llm:invoke")
    body = {"model": "no-such-model", "messages": user("hi"), **fields}

    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        chat = await http.post("/v1/chat/completions", json=body, headers=bearer(key))
        embed = await http.post(
            "/v1/embeddings",
            json={"model": "no-such-model", "input": [], "dimensions": "x"},
            headers=bearer(key),
        )

    assert (chat.status_code, chat.json()["error"]["code"]) == (404, "model_not_found")
    assert (embed.status_code, embed.json()["error"]["code"]) == (404, "model_not_found")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"input": []}, "input", "empty_array"),
        ({"input": ["a", ""]}, "input[1]", "invalid_value"),
        ({"input": ["a", None]}, "input[1]", "invalid_type"),
        ({"input": [1, 2]}, "input", "unsupported_parameter"),
        ({"input": ["a"] * 2049}, "input", "array_above_max_length"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "invalid_value"),
        ({"input": "x", "dimensions": 0}, "dimensions", "integer_below_min_value"),
        ({"input": "x", "dimensions": int("9" * 310)}, "dimensions", "invalid_value"),
        ({"input": "x", "user": 1}, "user", "invalid_type"),
        ({"input": "x", "extra": 1}, "extra", "unknown_parameter"),
        ({"model": 5, "input": "x"}, "model", "invalid_type"),
    ],
)
async def test_bad_embedding_requests_are_400_in_openai_s_shape(
    gateway_url: str, nexus_settings: NexusSettings, fields: dict[str, Any], param: str, code: str
) -> None:
    key = await make_key(nexus_settings, "llm:invoke")
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        response = await http.post(
            "/v1/embeddings", json={"model": EMBEDDER, **fields}, headers=bearer(key)
        )

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


async def test_an_idempotency_key_reaches_chat_and_embed(
    gateway_url: str, nexus_settings: NexusSettings
) -> None:
    """The llm service runs a unary Chat or Embed with a key once (ADR 0019): a retry gets the
    first answer, the same key with another request is 400 naming the header."""
    key = await make_key(nexus_settings, "llm:invoke")
    retry = {**bearer(key), "Idempotency-Key": str(uuid.uuid4())}
    chat = {"model": TINY_MODEL_NAME, "messages": user(prompt()), "max_tokens": 4}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as http:
        first = await http.post("/v1/chat/completions", json=chat, headers=retry)
        again = await http.post("/v1/chat/completions", json=chat, headers=retry)
        other = await http.post(
            "/v1/embeddings", json={"model": EMBEDDER, "input": "x"}, headers=retry
        )

    assert first.status_code == 200, first.text
    assert again.json() == first.json()
    assert other.status_code == 400, other.text
    assert other.json()["error"]["param"] == "Idempotency-Key"


async def test_keys_are_checked(gateway_url: str, nexus_settings: NexusSettings) -> None:
    narrow = await make_key(nexus_settings, "anomaly:invoke")
    with pytest.raises(openai.AuthenticationError) as missing:
        await client_of(gateway_url, "nxk_not-a-key").models.list()
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client_of(gateway_url, narrow).models.list()

    assert missing.value.code == "invalid_api_key"
    assert "llm:invoke" in denied.value.message


async def test_an_oversized_body_is_413(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(
            model=TINY_MODEL_NAME, messages=user("x" * MAX_BODY_BYTES)
        )

    assert (caught.value.status_code, caught.value.code) == (413, "request_too_large")


async def test_a_key_over_its_rate_is_429(gateway_url: str, nexus_settings: NexusSettings) -> None:
    client = client_of(
        gateway_url, await make_key(nexus_settings, "llm:invoke", rate_limit_per_minute=1)
    )
    await client.models.list()
    await client.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        await client.models.list()

    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1


async def test_a_key_over_its_budget_gets_insufficient_quota(
    gateway_url: str, nexus_settings: NexusSettings
) -> None:
    admin = await make_key(nexus_settings, "llm:admin")
    async with open_key_store(nexus_settings, "test-openai-budget") as store:
        key, secret = await store.create(f"budget-{uuid.uuid4().hex[:6]}", ["llm:invoke"])
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        budget = await http.put(
            f"/v1/llm/budgets/{key.id}",
            json={"limit_usd": 1e-6},
            headers={"Authorization": f"Bearer {admin}"},
        )
    assert budget.status_code == 200, budget.text
    with pytest.raises(openai.RateLimitError) as caught:
        await client_of(gateway_url, secret).chat.completions.create(
            model=TINY_MODEL_NAME, messages=user(prompt()), max_tokens=5
        )

    assert (caught.value.code, caught.value.type) == ("insufficient_quota", "insufficient_quota")
    assert caught.value.response.headers["x-should-retry"] == "false"
