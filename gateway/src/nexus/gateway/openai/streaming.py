"""A StreamChat call relayed as OpenAI's Server-Sent Events.

Each chunk is `data: <chat.completion.chunk JSON>\\n\\n` and the stream ends with
`data: [DONE]\\n\\n`. Unlike the generic `sse.EventStream`, the response starts only once the first
message is in: a failure before it gets its real HTTP status and OpenAI's error body, and the
`X-Nexus-Cached` header reports the first message's `cached`. An error after that is sent as
`data: {"error": {...}}` (which OpenAI's clients raise), and the stream closes. As in
`sse.EventStream`, the client going away cancels the gRPC call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import grpc
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.gateway.openai.errors import OpenAIError
from nexus.gateway.openai.responses import CACHED_HEADER, ChunkRenderer
from nexus.gateway.sse import KEEPALIVE, data_event
from nexus.gateway.transcode import dumps

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
CLIENT_GONE = 499
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx buffers responses by default, which would hold chunks back.
    (b"x-accel-buffering", b"no"),
]

ErrorOf = Callable[[grpc.aio.AioRpcError], OpenAIError]


class ChunkStream(Response):
    """An ASGI response relaying a running StreamChat call as OpenAI chunks.

    Args:
        call: The running server-streaming call.
        renderer: StreamChatResponse -> chunks.
        error_of: Status error -> the OpenAI error to answer or send.
        keepalive_s: Silence after which a keep-alive comment is sent (once started).
        on_close: Called once when the stream ends, however it ends (with the HTTP status).
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[Any, Any],
        *,
        renderer: ChunkRenderer,
        error_of: ErrorOf,
        keepalive_s: float,
        on_close: Callable[[int], None],
    ) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self._call = call
        self._renderer = renderer
        self._error_of = error_of
        self._keepalive_s = keepalive_s
        self._on_close = on_close
        self._read: asyncio.Future[Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.ensure_future(self._relay(send))
        gone = asyncio.ensure_future(_client_gone(receive))
        status = CLIENT_GONE
        try:
            done, _ = await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
            if relay in done:
                status = _relay_status(relay)
        finally:
            await self._cleanup(relay, gone)
            self._on_close(status)

    async def _cleanup(self, *tasks: asyncio.Future[Any]) -> None:
        self._call.cancel()  # the backend sees CANCELLED when the client went away
        if self._read is not None:
            self._read.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _relay(self, send: Send) -> int:
        """Relays the whole stream; returns the HTTP status it answered."""
        try:
            first = await self._next(wait_s=None, send=send)
        except grpc.aio.AioRpcError as err:
            error = self._error_of(err)
            await _send_error(send, error)
            return error.status
        await send({"type": "http.response.start", "status": 200, "headers": _headers(first)})
        message = first
        while message is not grpc.aio.EOF:
            for chunk in self._renderer.chunks(message):
                await _body(send, data_event(dumps(chunk)))
            try:
                message = await self._next(wait_s=self._keepalive_s, send=send)
            except grpc.aio.AioRpcError as err:
                await _body(send, data_event(self._error_of(err).to_json()), more=False)
                return 200
        for chunk in self._renderer.final():
            await _body(send, data_event(dumps(chunk)))
        await _body(send, DONE, more=False)
        return 200

    async def _next(self, *, wait_s: float | None, send: Send) -> Any:
        """The next message (or EOF), sending a keep-alive comment after each `wait_s` of
        silence (`None`: before the response started, when no comment can be sent)."""
        self._read = read = asyncio.ensure_future(self._call.read())
        while True:
            done, _ = await asyncio.wait({read}, timeout=wait_s)
            if done:
                return read.result()
            await _body(send, KEEPALIVE)


def _headers(first: Any) -> list[tuple[bytes, bytes]]:
    """The stream's headers; `X-Nexus-Cached` from the first message."""
    cached = isinstance(first, pb.StreamChatResponse) and first.cached
    return [*_HEADERS, (CACHED_HEADER.lower().encode(), b"true" if cached else b"false")]


async def _send_error(send: Send, error: OpenAIError) -> None:
    """An error answered before the stream started: its status and OpenAI's body."""
    response = error.response()
    await send(
        {"type": "http.response.start", "status": error.status, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


def _relay_status(relay: asyncio.Future[int]) -> int:
    """The relay's status; a failed write means the client left."""
    err = relay.exception()
    if err is None:
        return relay.result()
    if not isinstance(err, OSError):
        log.error("OpenAI stream relay failed", exc_info=err)
    return CLIENT_GONE


async def _body(send: Send, chunk: bytes, *, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": more})


async def _client_gone(receive: Receive) -> None:
    """Returns when the client disconnects (the request body was read before)."""
    while (await receive())["type"] != "http.disconnect":
        pass
