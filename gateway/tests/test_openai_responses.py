"""The llm service's replies -> OpenAI JSON, gateway errors -> OpenAI errors, and the OpenAI paths
of the OpenAPI document."""

from __future__ import annotations

import base64

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from openai.types import CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.common.errors import REQUEST_TOO_LARGE, FieldViolation
from nexus.gateway import GatewaySettings, build_app, build_openapi, discover
from nexus.gateway.backends import BACKEND_NOT_FOUND
from nexus.gateway.errors import GatewayError
from nexus.gateway.openai import add_openai
from nexus.gateway.openai.errors import from_gateway_error
from nexus.gateway.openai.responses import (
    ChunkRenderer,
    cached_header,
    chat_completion,
    embeddings,
    find_model,
    model_list,
    model_object,
)

CREATED = Timestamp(seconds=1_700_000_000)
USAGE = pb.Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10, cost_usd=0.5)


def reply(**fields: object) -> pb.ChatResponse:
    defaults: dict[str, object] = {
        "id": "chatcmpl-1",
        "model": "tiny",
        "provider": "nexus-local",
        "message": pb.ChatMessage(role="assistant", content="Hi!"),
        "finish_reason": "stop",
        "usage": USAGE,
        "create_time": CREATED,
    }
    return pb.ChatResponse(**{**defaults, **fields})  # type: ignore[arg-type]


def piece(**fields: object) -> pb.StreamChatResponse:
    return pb.StreamChatResponse(id="s-1", model="tiny", create_time=CREATED, **fields)  # type: ignore[arg-type]


# Chat.


def test_a_chat_completion_is_openais_object() -> None:
    body = chat_completion(reply())

    assert body == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
    assert ChatCompletion.model_validate(body).choices[0].message.content == "Hi!"


def test_a_tool_call_reply_has_null_content() -> None:
    call = pb.ToolCall(id="c1", type="function", function=pb.FunctionCall(name="f", arguments="{}"))
    message = pb.ChatMessage(role="assistant", tool_calls=[call])
    body = chat_completion(reply(message=message, finish_reason="tool_calls", id=""))
    choice = body["choices"][0]

    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert choice["finish_reason"] == "tool_calls"
    assert body["id"].startswith("chatcmpl-")
    assert len(body["id"]) > len("chatcmpl-")


def test_unknown_finish_reasons_and_missing_times_get_defaults() -> None:
    body = chat_completion(reply(finish_reason="", create_time=None), clock=lambda: 42.9)

    assert (body["choices"][0]["finish_reason"], body["created"]) == ("stop", 42)


def test_cached_header() -> None:
    assert cached_header(True) == {"X-Nexus-Cached": "true"}
    assert cached_header(False) == {"X-Nexus-Cached": "false"}


def test_stream_chunks_carry_the_role_first_then_text_then_the_finish() -> None:
    renderer = ChunkRenderer(include_usage=False)
    chunks = [
        *renderer.chunks(piece(role="assistant", content="Hel")),
        *renderer.chunks(piece(content="lo")),
        *renderer.chunks(piece(finish_reason="stop", usage=USAGE)),
        *renderer.final(),
    ]

    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert {(c["id"], c["object"], c["created"], c["model"]) for c in chunks} == {
        ("s-1", "chat.completion.chunk", 1_700_000_000, "tiny")
    }
    assert all("usage" not in c for c in chunks)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)


def test_include_usage_adds_a_last_chunk_without_choices() -> None:
    renderer = ChunkRenderer(include_usage=True)
    chunks = [
        *renderer.chunks(piece(role="assistant", content="Hi")),
        *renderer.chunks(piece(finish_reason="length")),
        *renderer.chunks(piece(usage=USAGE)),  # usage alone: no chunk of its own
        *renderer.final(),
    ]

    assert [c["usage"] for c in chunks] == [
        None,
        None,
        {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    ]
    assert chunks[-1]["choices"] == []
    assert ChatCompletionChunk.model_validate(chunks[-1]).usage is not None


def test_stream_ids_and_times_are_fixed_by_the_first_chunk() -> None:
    renderer = ChunkRenderer(include_usage=False, clock=lambda: 5.0)
    first = renderer.chunks(pb.StreamChatResponse(model="m", role="assistant"))[0]
    second = renderer.chunks(pb.StreamChatResponse(model="m", content="x"))[0]

    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert (first["id"], first["created"]) == (second["id"], second["created"])
    assert first["created"] == 5
    assert first["id"].startswith("chatcmpl-")


def test_tool_call_fragments() -> None:
    renderer = ChunkRenderer(include_usage=False)
    start = pb.ToolCallDelta(index=0, id="c1", type="function", name="lookup")
    rest = pb.ToolCallDelta(index=0, arguments='{"q": 1}')
    chunks = renderer.chunks(piece(tool_calls=[start])) + renderer.chunks(piece(tool_calls=[rest]))

    assert [c["choices"][0]["delta"]["tool_calls"] for c in chunks] == [
        [
            {
                "index": 0,
                "id": "c1",
                "type": "function",
                "function": {"name": "lookup", "arguments": ""},
            }
        ],
        [{"index": 0, "function": {"arguments": '{"q": 1}'}}],
    ]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)


def test_an_empty_stream_ends_without_a_usage_chunk() -> None:
    assert ChunkRenderer(include_usage=True).final() == []


# Embeddings.


def embed_reply() -> pb.EmbedResponse:
    vectors = [[0.1, -2.5, 3.0], [1e-8, 0.0, -1.0]]
    return pb.EmbedResponse(
        model="minilm",
        embeddings=[pb.Embedding(values=v) for v in vectors],
        usage=pb.Usage(prompt_tokens=4, total_tokens=4),
        dimensions=3,
    )


def test_float_embeddings() -> None:
    body = embeddings(embed_reply(), "float")

    assert body["object"] == "list"
    assert (body["model"], body["usage"]) == ("minilm", {"prompt_tokens": 4, "total_tokens": 4})
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0]["object"] == "embedding"
    np.testing.assert_allclose(body["data"][0]["embedding"], [0.1, -2.5, 3.0], rtol=1e-6)
    CreateEmbeddingResponse.model_validate(body)


def test_base64_embeddings_are_little_endian_float32() -> None:
    body = embeddings(embed_reply(), "base64")
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]]

    expected = np.array([[0.1, -2.5, 3.0], [1e-8, 0.0, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(np.stack(decoded), expected)


# Models.


def models() -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[
            pb.ModelInfo(
                id="openai/gpt-4o",
                kind=pb.ModelInfo.KIND_CHAT,
                providers=["openai", "azure"],
                context_window=128_000,
            ),
            pb.ModelInfo(id="minilm", kind=pb.ModelInfo.KIND_EMBEDDING, dimensions=384),
        ]
    )


def test_model_objects() -> None:
    listed = model_list(models())
    chat_model, embedder = listed["data"]

    assert listed["object"] == "list"
    assert chat_model == {
        "id": "openai/gpt-4o",
        "object": "model",
        "created": 0,
        "owned_by": "openai",
        "kind": "chat",
        "providers": ["openai", "azure"],
        "context_window": 128_000,
    }
    assert (embedder["owned_by"], embedder["kind"], embedder["dimensions"]) == (
        "nexus",
        "embedding",
        384,
    )
    assert Model.model_validate(chat_model).id == "openai/gpt-4o"


def test_find_model() -> None:
    found = find_model(models(), "minilm")

    assert found is not None
    assert found.dimensions == 384
    assert find_model(models(), "gpt") is None
    assert model_object(pb.ModelInfo(id="x"))["kind"] == "unknown"


# Errors.


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            GatewayError.bad_field("temperature", "must be at most 2"),
            (400, "invalid_request_error", "temperature", None),
        ),
        (
            GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT, "too long", reason="CONTEXT_WINDOW_EXCEEDED"
            ),
            (400, "invalid_request_error", None, "context_length_exceeded"),
        ),
        (
            GatewayError(grpc.StatusCode.FAILED_PRECONDITION, "bad", reason="EXTRACTION_INVALID"),
            (400, "invalid_request_error", None, "extraction_invalid"),
        ),
        (
            GatewayError(grpc.StatusCode.UNAUTHENTICATED, "no key"),
            (401, "invalid_request_error", None, "invalid_api_key"),
        ),
        (
            GatewayError(grpc.StatusCode.PERMISSION_DENIED, "needs llm:invoke"),
            (403, "invalid_request_error", None, "insufficient_permissions"),
        ),
        (
            GatewayError(grpc.StatusCode.NOT_FOUND, "no model x", reason="MODEL_NOT_FOUND"),
            (404, "invalid_request_error", "model", "model_not_found"),
        ),
        (
            GatewayError(grpc.StatusCode.NOT_FOUND, "no llm", reason=BACKEND_NOT_FOUND),
            (404, "invalid_request_error", None, "not_found"),
        ),
        (
            GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, "big", reason=REQUEST_TOO_LARGE),
            (413, "invalid_request_error", None, "request_too_large"),
        ),
        (
            GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", reason="RATE_LIMITED"),
            (429, "requests", None, "rate_limit_exceeded"),
        ),
        (
            GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, "over", reason="BUDGET_EXCEEDED"),
            (429, "insufficient_quota", None, "insufficient_quota"),
        ),
        (
            GatewayError(grpc.StatusCode.INTERNAL, "internal error"),
            (500, "server_error", None, None),
        ),
        (
            GatewayError(grpc.StatusCode.UNAVAILABLE, "down"),
            (503, "server_error", None, "service_unavailable"),
        ),
        (
            GatewayError(grpc.StatusCode.DEADLINE_EXCEEDED, "late"),
            (504, "server_error", None, "timeout"),
        ),
    ],
)
def test_gateway_errors_in_openais_format(
    error: GatewayError, expected: tuple[int, str, str | None, str | None]
) -> None:
    converted = from_gateway_error(error)

    assert (converted.status, converted.type, converted.param, converted.code) == expected
    assert converted.body()["error"]["message"] == error.message
    response = converted.response()
    assert response.status_code == expected[0]
    assert response.media_type == "application/json"


def test_error_headers_carry_over_and_budget_refusals_are_not_retried() -> None:
    limited = GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "x", reason="RATE_LIMITED", headers={"Retry-After": "3"}
    )
    budget = GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, "x", reason="BUDGET_EXCEEDED")
    violations = [FieldViolation("messages[0].content", "empty"), FieldViolation("x", "y")]
    bad = GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "bad", violations=violations)

    assert from_gateway_error(limited).headers == {"Retry-After": "3"}
    assert from_gateway_error(budget).headers == {"x-should-retry": "false"}
    assert from_gateway_error(bad).param == "messages[0].content"


# The OpenAPI document.


def test_the_openapi_document_with_the_openai_paths_is_valid() -> None:
    document = build_openapi(discover())
    add_openai(document)
    validate(document)
    chat = document["paths"]["/v1/chat/completions"]["post"]

    assert chat["x-nexus-scope"] == "llm:invoke"
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert set(document["paths"]) >= {"/v1/embeddings", "/v1/models", "/v1/models/{model}"}
    assert "openai.CreateChatCompletionRequest" in document["components"]["schemas"]
    # The writes take an Idempotency-Key (forwarded to Chat and Embed) and a body (415).
    embed = document["paths"]["/v1/embeddings"]["post"]
    listing = document["paths"]["/v1/models"]["get"]
    key = {"$ref": "#/components/parameters/IdempotencyKey"}
    assert key in chat["parameters"]
    assert key in embed["parameters"]
    assert listing["parameters"] == []
    assert {"414", "415", "431"} <= set(chat["responses"]) & set(embed["responses"])
    assert "415" not in listing["responses"]


def test_the_openai_paths_are_documented_only_with_an_llm_backend() -> None:
    def paths(backends: dict[str, str]) -> set[str]:
        app = build_app(GatewaySettings(backends=backends), bindings=[])
        document = TestClient(app).get("/openapi.json").json()
        return set(document["paths"]) - set(build_openapi([])["paths"])

    assert paths({}) == set()
    assert paths({"llm": "127.0.0.1:1"}) == {
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
    }


# The routes, before any backend answers (errors of the gateway's own pipeline).

UNREACHABLE = "127.0.0.1:1"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def http(**overrides: object) -> httpx.AsyncClient:
    """A client of an app whose llm backend does not answer (nothing listens there)."""
    fields: dict[str, object] = {
        "backends": {"llm": UNREACHABLE},
        "max_body_bytes": 1000,
        "rate_limit_per_minute": 0,
        **overrides,
    }
    app = build_app(GatewaySettings(**fields), bindings=[])  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://nexus")


async def test_without_an_llm_backend_the_routes_are_404() -> None:
    async with http(backends={}) as client:
        chat = await client.post("/v1/chat/completions", json=CHAT)
        listed = await client.get("/v1/models")

    assert (chat.status_code, listed.status_code) == (404, 404)
    assert chat.json()["error"]["code"] == "not_found"
    assert set(chat.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_wrong_method_is_405() -> None:
    async with http() as client:
        reply = await client.get("/v1/chat/completions")

    assert (reply.status_code, reply.headers["allow"]) == (405, "POST")
    assert reply.json()["error"]["code"] == "method_not_allowed"


async def test_the_gateway_s_own_errors_come_before_the_backend_call() -> None:
    """Parameters are the llm service's to judge; the body, its size and the cache header are
    the gateway's."""
    async with http() as client:
        not_json = await client.post("/v1/embeddings", content=b"{nope")
        nan = await client.post("/v1/chat/completions", content=b'{"temperature": NaN}')
        too_large = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]},
        )
        bad_cache = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Nexus-Cache": "maybe"}
        )

    assert (not_json.status_code, nan.status_code) == (400, 400)
    assert (too_large.status_code, too_large.json()["error"]["code"]) == (413, "request_too_large")
    assert (bad_cache.status_code, bad_cache.json()["error"]["param"]) == (400, "X-Nexus-Cache")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", CHAT),
        ("POST", "/v1/chat/completions", {**CHAT, "stream": True}),
        ("POST", "/v1/embeddings", {"model": "m", "input": "x"}),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/org/model", None),
    ],
)
async def test_an_unreachable_backend_is_503(
    method: str, path: str, body: dict[str, object] | None
) -> None:
    async with http() as client:
        reply = await client.request(method, path, json=body)

    assert reply.status_code == 503
    assert reply.json()["error"] == {
        "message": "backend 'llm' is unavailable",
        "type": "server_error",
        "param": None,
        "code": "service_unavailable",
    }


async def test_the_rate_limit_is_429_with_retry_after() -> None:
    async with http(rate_limit_per_minute=1, rate_limit_burst=1) as client:
        first = await client.post("/v1/chat/completions", content=b"{nope")
        second = await client.post("/v1/chat/completions", json=CHAT)

    assert first.status_code == 400
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(second.headers["retry-after"]) >= 1
