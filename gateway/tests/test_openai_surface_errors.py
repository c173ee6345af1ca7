"""Every path of the OpenAI surface answers in OpenAI's error body, whichever layer refuses the
request (415, 404, 405, 414, a bad Idempotency-Key), and the native paths keep theirs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from nexus.gateway import GatewaySettings, build_app

UNREACHABLE = "127.0.0.1:1"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
EMBEDDING = {"model": "m", "input": "x"}


def http(**overrides: Any) -> httpx.AsyncClient:
    """A client of an app whose llm backend does not answer: a request that reaches it is 503."""
    fields: dict[str, Any] = {"backends": {"llm": UNREACHABLE}, "rate_limit_per_minute": 0}
    app = build_app(GatewaySettings(**(fields | overrides)), bindings=[])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://nexus")


def openai_error(reply: httpx.Response) -> dict[str, Any]:
    """The error of an answer in OpenAI's body (and only those four fields)."""
    assert reply.headers["content-type"] == "application/json"
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, reply.text
    assert error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings"])
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
async def test_a_body_that_is_not_json_is_415(path: str, content_type: str) -> None:
    async with http() as client:
        reply = await client.post(path, json=CHAT, headers={"content-type": content_type})

    assert reply.status_code == 415  # refused before the backend call (that would be 503)
    assert openai_error(reply)["code"] == "unsupported_media_type"


@pytest.mark.parametrize("content_type", [None, "application/json; charset=utf-8"])
async def test_a_json_body_reaches_the_backend(content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    async with http() as client:
        reply = await client.post("/v1/embeddings", json=EMBEDDING, headers=headers)

    assert reply.status_code == 503


@pytest.mark.parametrize("model", ["%C3%92%0Afoo", "tiny%0A", "a%0D%0Ab", "%00", "org/a%09b"])
async def test_a_model_id_with_odd_characters_takes_the_openai_route(model: str) -> None:
    async with http() as client:
        reply = await client.get(f"/v1/models/{model}")

    # The route asked the backend for its models (the native catch-all would answer 404).
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["code"] == "service_unavailable"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/chat/completions/abc"),
        ("POST", "/v1/chat/completions/"),
        ("POST", "/v1/embeddings/x%0Ay"),
        ("DELETE", "/v1/embeddings/a/b"),
    ],
)
async def test_a_path_under_the_surface_without_a_route_is_openai_s_404(
    method: str, path: str
) -> None:
    async with http() as client:
        reply = await client.request(method, path)

    assert reply.status_code == 404
    assert openai_error(reply)["message"].startswith(f"Invalid URL ({method} ")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/v1/models", "GET"),
        ("PROPFIND", "/v1/models/m", "GET"),
        ("PUT", "/v1/embeddings", "POST"),
        ("OPTIONS", "/v1/chat/completions", "POST"),
    ],
)
async def test_any_other_method_is_openai_s_405(method: str, path: str, allowed: str) -> None:
    async with http() as client:
        reply = await client.request(method, path)

    assert (reply.status_code, reply.headers["allow"]) == (405, allowed)
    assert openai_error(reply)["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/m", "/v1/chat/completions"])
async def test_a_long_url_is_openai_s_414(path: str) -> None:
    async with http(max_url_bytes=1000) as client:
        reply = await client.get(path, params={"q": "x" * 2000})

    assert reply.status_code == 414
    assert openai_error(reply)["code"] == "uri_too_long"


async def test_native_paths_keep_the_native_error_body() -> None:
    async with http(max_url_bytes=1000) as client:
        beside = await client.get("/v1/modelsx")
        long = await client.get("/v1/llm/served-models", params={"q": "x" * 2000})

    assert (beside.status_code, beside.json()["error"]["status"]) == (404, "NOT_FOUND")
    assert (long.status_code, long.json()["error"]["reason"]) == (414, "URI_TOO_LONG")


@pytest.mark.parametrize("key", ["", "x" * 256, "é".encode("latin-1"), b'""'])
async def test_a_bad_idempotency_key_is_openai_s_400(key: str | bytes) -> None:
    async with http() as client:
        reply = await client.post(
            "/v1/embeddings", json=EMBEDDING, headers={"Idempotency-Key": key}
        )

    assert reply.status_code == 400, reply.text
    assert openai_error(reply)["param"] == "Idempotency-Key"
