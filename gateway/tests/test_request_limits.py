"""Limits of a request, checked as early as possible and answered in the one error body (in
OpenAI's on the OpenAI surface's paths): a body that is not JSON (415), a URL too long (414, also
when it is longer than the server reads at all), headers too large (431); and large bodies are
parsed off the event loop, so the gateway keeps answering while they are."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from nexus.gateway import GatewaySettings

MB = 1024 * 1024


# Media types.


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
async def test_a_body_that_is_not_json_is_415(
    client: httpx.AsyncClient, anomaly: Any, content_type: str
) -> None:
    reply = await client.post(
        "/v1/anomaly/detectors/d:score",
        content=b'{"points": [{"values": [1]}]}',
        headers={"content-type": content_type},
    )

    assert reply.status_code == 415, reply.text
    assert reply.json()["error"]["reason"] == "UNSUPPORTED_MEDIA_TYPE"
    assert anomaly.seen.requests == []  # refused before any backend call


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "Application/JSON; charset=UTF-8", "application/merge-patch+json"],
)
async def test_json_bodies_are_accepted(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    reply = await client.post(
        "/v1/anomaly/detectors/d:score", content=b'{"points": [{"values": [1]}]}', headers=headers
    )

    assert reply.status_code == 200, reply.text


# URLs and headers.


async def _raw(url: str, head: bytes, *, chunk: int = 16 * 1024) -> bytes:
    """Sends `head` in chunks (as a network would deliver a long one) and reads the answer."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        for start in range(0, len(head), chunk):
            writer.write(head[start : start + chunk])
            await writer.drain()
            await asyncio.sleep(0.001)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def _status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("length", [20_000, 70_000, 1_000_000])
async def test_a_long_url_is_414_not_a_reset(start_gateway: Any, length: int) -> None:
    client = await start_gateway()
    target = f"/v1/anomaly/sources?page_token={'a' * length}"
    head = f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

    status, body = _status_and_body(await _raw(str(client.base_url), head))

    assert status == 414
    assert body["error"]["reason"] == "URI_TOO_LONG"
    assert f"limit of {GatewaySettings().max_url_bytes} bytes" in body["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions?x=", "/v1/models/"])
async def test_on_the_openai_surface_a_long_url_is_openai_s_414(
    start_gateway: Any, path: str
) -> None:
    """Beyond what the server reads at all (the URL limit's 414 is tested on the app)."""
    client = await start_gateway()
    head = f"POST {path}{'a' * 200_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

    status, body = _status_and_body(await _raw(str(client.base_url), head))

    assert status == 414
    assert body["error"]["code"] == "uri_too_long"
    assert body["error"]["type"] == "invalid_request_error"


async def test_on_the_openai_surface_large_headers_are_openai_s_431(start_gateway: Any) -> None:
    client = await start_gateway()
    head = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 200_000}\r\n\r\n".encode()

    status, body = _status_and_body(await _raw(str(client.base_url), head))

    assert (status, body["error"]["code"]) == (431, "headers_too_large")


async def test_headers_beyond_the_head_limit_are_431(start_gateway: Any) -> None:
    client = await start_gateway()
    head = f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 200_000}\r\n\r\n".encode()

    status, body = _status_and_body(await _raw(str(client.base_url), head))

    assert status == 431
    assert body["error"]["reason"] == "HEADERS_TOO_LARGE"


async def test_a_url_within_the_limit_is_served(client: httpx.AsyncClient) -> None:
    reply = await client.get("/v1/anomaly/models", params={"page_token": "t" * 4000})

    assert reply.status_code == 200, reply.text


# Large bodies and the event loop.


@functools.cache
def _large_body(limit: int) -> bytes:
    """A score request just under `limit` bytes: points of four values."""
    point = b'{"values":[0.123456,1.234567,2.345678,3.456789]}'
    count = (limit - 100) // (len(point) + 1)
    return b'{"points":[' + b",".join([point] * count) + b"]}"


class _Prober(threading.Thread):
    """Polls /healthz from its own thread (its own clock, independent of the gateway's event
    loop) and records the longest wait for an answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.answers = 0
        self.longest = 0.0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                self.longest = max(self.longest, time.perf_counter() - started)
                self.answers += 1
                time.sleep(0.02)


async def test_healthz_answers_while_large_bodies_are_parsed(start_gateway: Any) -> None:
    client = await start_gateway(max_body_bytes=8 * MB)
    body = _large_body(8 * MB)
    prober = _Prober(str(client.base_url))
    prober.start()
    started = time.perf_counter()
    replies = await asyncio.gather(
        *(
            client.post(
                "/v1/anomaly/detectors/bad:score",
                content=body,
                headers={"content-type": "application/json"},
                timeout=120,
            )
            for _ in range(3)
        )
    )
    elapsed = time.perf_counter() - started
    prober.stop.set()
    await asyncio.to_thread(prober.join)

    # Parsed and sent (the fake backend takes 4 MB messages at most: a 4xx answer either way).
    assert all(400 <= r.status_code < 500 for r in replies)
    assert prober.answers >= 3
    # Parsed on the event loop, the three bodies held it for nearly all of `elapsed`; off it,
    # no wait comes near that (a generous bound: figures are in bench/gateway_large_bodies.py).
    assert prober.longest < elapsed / 2
