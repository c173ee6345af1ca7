"""Every error in one body: gRPC statuses with rich details, limits, deadlines, dead backends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from nexus.gateway import GatewayError

SCORE = "/v1/anomaly/detectors/{}:score"

STATUS_TO_HTTP = [
    ("INVALID_ARGUMENT", 400),
    ("FAILED_PRECONDITION", 400),
    ("OUT_OF_RANGE", 400),
    ("UNAUTHENTICATED", 401),
    ("PERMISSION_DENIED", 403),
    ("NOT_FOUND", 404),
    ("ALREADY_EXISTS", 409),
    ("ABORTED", 409),
    ("RESOURCE_EXHAUSTED", 429),
    ("CANCELLED", 499),
    ("UNIMPLEMENTED", 501),
    ("UNAVAILABLE", 503),
    ("DEADLINE_EXCEEDED", 504),
    ("INTERNAL", 500),
    ("UNKNOWN", 500),
    ("DATA_LOSS", 500),
]
OPAQUE = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}


@pytest.mark.parametrize(("status", "http"), STATUS_TO_HTTP)
async def test_status_codes_map_to_http(client: httpx.AsyncClient, status: str, http: int) -> None:
    reply = await client.post(SCORE.format(f"error-{status}"), json={})

    assert reply.status_code == http
    error = reply.json()["error"]
    assert (error["code"], error["status"], error["reason"]) == (http, status, "TEST_REASON")
    # Messages that may carry internals are replaced; the others are the service's own.
    expected = (
        "internal error; the server logged the details" if status in OPAQUE else f"test {status}"
    )
    assert error["message"] == expected


async def test_field_violations_come_through(client: httpx.AsyncClient) -> None:
    reply = await client.post(SCORE.format("bad"), json={"points": [{"values": [1]}]})

    assert reply.status_code == 400
    assert reply.json() == {
        "error": {
            "code": 400,
            "status": "INVALID_ARGUMENT",
            "message": "bad points",
            "reason": "",
            "field_violations": [
                {"field": "points[0].values", "description": "expected 2 values, got 1"}
            ],
        }
    }


async def test_request_too_large_reason_is_413(client: httpx.AsyncClient) -> None:
    reply = await client.post(SCORE.format("too-big"), json={})

    assert reply.status_code == 413
    assert reply.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert reply.json()["error"]["reason"] == "REQUEST_TOO_LARGE"


async def test_unexpected_exception_leaks_nothing(client: httpx.AsyncClient) -> None:
    reply = await client.post(SCORE.format("crash"), json={})

    assert reply.status_code == 500
    assert "secret" not in reply.text
    assert "10.0.0.7" not in reply.text


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient, anomaly: Any) -> None:
    big = {"points": [{"values": [1.0] * 2000}]}  # > 4096 bytes (the test limit)
    reply = await client.post(SCORE.format("d"), json=big)

    assert reply.status_code == 413
    assert reply.json()["error"]["reason"] == "REQUEST_TOO_LARGE"
    assert anomaly.seen.requests == []


async def test_chunked_body_is_counted(client: httpx.AsyncClient, anomaly: Any) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked encoding
        yield b'{"points": [{"values": ['
        for _ in range(1000):
            yield b"1.0, "
        yield b"1.0]}]}"

    reply = await client.post(SCORE.format("d"), content=chunks())

    assert reply.status_code == 413
    assert anomaly.seen.requests == []


async def test_short_client_timeout_gives_504(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    reply = await client.post(SCORE.format("slow"), json={}, headers={"X-Nexus-Timeout": "0.2"})

    assert reply.status_code == 504
    assert reply.json()["error"]["status"] == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 3


async def test_grpc_timeout_header_too(client: httpx.AsyncClient) -> None:
    reply = await client.post(SCORE.format("slow"), json={}, headers={"grpc-timeout": "200m"})

    assert reply.status_code == 504


async def test_deadlines_are_set_and_capped(client: httpx.AsyncClient, anomaly: Any) -> None:
    await client.post(SCORE.format("d"), json={})
    await client.post(SCORE.format("d"), json={}, headers={"X-Nexus-Timeout": "9999"})
    await client.post(SCORE.format("d"), json={}, headers={"X-Nexus-Timeout": "1.5"})

    default, capped, asked = anomaly.seen.time_remaining
    slack = 0.2  # the wire format of grpc-timeout rounds up
    assert 4 < default <= 5 + slack  # default_timeout_s
    assert 9 < capped <= 10 + slack  # max_timeout_s
    assert 1 < asked <= 1.5 + slack


async def test_bad_timeout_header_is_400(client: httpx.AsyncClient) -> None:
    reply = await client.post(SCORE.format("d"), json={}, headers={"X-Nexus-Timeout": "soon"})

    assert reply.status_code == 400
    assert reply.json()["error"]["field_violations"][0]["field"] == "X-Nexus-Timeout"


async def test_stopped_backend_is_503_at_once(client: httpx.AsyncClient, anomaly: Any) -> None:
    await anomaly.stop()
    started = time.monotonic()
    reply = await client.post(SCORE.format("d"), json={})

    assert reply.status_code == 503
    assert reply.json()["error"]["message"] == "backend 'anomaly' is unavailable"
    assert time.monotonic() - started < 2  # not the 5 s deadline


async def test_unconfigured_backend_is_404(start_gateway: Any) -> None:
    client = await start_gateway(backends={})
    reply = await client.post(SCORE.format("d"), json={})

    assert reply.status_code == 404
    assert reply.json()["error"]["reason"] == "BACKEND_NOT_FOUND"


def test_error_body_shape() -> None:
    error = GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", headers={"Retry-After": "2"}
    )
    response = error.response()

    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert error.body() == {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "slow down",
            "reason": "",
            "field_violations": [],
        }
    }
