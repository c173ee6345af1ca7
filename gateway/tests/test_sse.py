"""Server-streaming RPCs as Server-Sent Events, over a real socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

WATCH = "/v1/anomaly/anomalies:watch"


async def read_events(reply: httpx.Response) -> list[tuple[str, Any]]:
    """(event type, parsed data) of each event; keep-alive comments are skipped."""
    events, kind, data = [], "message", []
    async for line in reply.aiter_lines():
        if line.startswith(":"):
            continue
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif line == "" and data:
            events.append((kind, json.loads("\n".join(data))))
            kind, data = "message", []
    return events


async def test_stream_relays_every_message(client: httpx.AsyncClient, anomaly: Any) -> None:
    async with client.stream("GET", WATCH, params={"source": "cpu"}) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = await read_events(reply)

    assert anomaly.seen.requests[-1].source == "cpu"
    assert [kind for kind, _ in events] == ["message"] * 3
    first = events[0][1]["anomaly"]
    assert (first["source"], first["point_id"], first["score"]) == ("cpu", "p0", 0.5)
    assert first["labels"] == {"i": "0"}
    assert first["model_version"] == ""  # zero values shown, as in unary responses


async def test_error_mid_stream_is_an_error_event(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", WATCH, params={"source": "fail"}) as reply:
        assert reply.status_code == 200
        events = await read_events(reply)

    assert [kind for kind, _ in events] == ["message", "message", "error"]
    error = events[-1][1]["error"]
    assert (error["code"], error["status"], error["message"]) == (
        400,
        "FAILED_PRECONDITION",
        "source went away",
    )


async def test_error_before_the_first_message_keeps_its_status(client: httpx.AsyncClient) -> None:
    reply = await client.get(WATCH, params={"source": "nope"})

    assert reply.status_code == 404
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["error"]["message"] == "no source nope"


async def test_a_slow_error_before_the_first_message_keeps_its_status(start_gateway: Any) -> None:
    # The answer is held until the first message or keep-alive, however late the error comes.
    client = await start_gateway(sse_keepalive_s=60)
    reply = await client.get(WATCH, params={"source": "late-nope"})

    assert reply.status_code == 404
    assert reply.json()["error"]["status"] == "NOT_FOUND"


async def test_client_disconnect_cancels_the_backend_call(start_gateway: Any, anomaly: Any) -> None:
    # No keep-alive writes: the gateway must notice the disconnect itself, not by a failed write.
    client = await start_gateway(sse_keepalive_s=60)
    async with client.stream("GET", WATCH, params={"source": "forever"}) as reply:
        lines = reply.aiter_lines()
        while not (await anext(lines)).startswith("data: "):
            pass
    # Leaving the block closed the connection mid-stream.

    await asyncio.wait_for(anomaly.seen.stream_cancelled.wait(), timeout=2)


async def test_keepalive_comments_on_a_quiet_stream(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", WATCH, params={"source": "forever"}) as reply:
        lines = reply.aiter_lines()
        seen = [await anext(lines) for _ in range(4)]

    assert ": keepalive" in seen  # sse_keepalive_s is 0.2 in the tests


async def test_stream_backend_down_is_503(client: httpx.AsyncClient, anomaly: Any) -> None:
    await anomaly.stop()
    reply = await client.get(WATCH)

    assert reply.status_code == 503
    assert reply.json()["error"]["status"] == "UNAVAILABLE"
