"""Server-Sent Events from a gRPC server stream (and the relay that raw HttpBody streams share).

Each message is `data: <json>\\n\\n`; a status error after the stream started is
`event: error\\ndata: <error body>\\n\\n`, then the stream closes. Nothing is sent before the
first message (or the first keep-alive), so an error that comes first, as a bad request's does,
is answered with its own HTTP status however long the backend took to say it.
The response listens for the client going away and then cancels the gRPC call, so the backend
stops working for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import grpc
from starlette.responses import Response
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from nexus.gateway.errors import GatewayError

log = logging.getLogger(__name__)

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # nginx buffers responses by default, which would hold events back.
    (b"x-accel-buffering", b"no"),
]
KEEPALIVE = b": keepalive\n\n"

Render = Callable[[Any], str]
ErrorOf = Callable[[grpc.aio.AioRpcError], GatewayError]


def data_event(json_text: str) -> bytes:
    """One message event."""
    return f"data: {json_text}\n\n".encode()


def error_event(err: GatewayError) -> bytes:
    """The error event that ends a stream."""
    return f"event: error\ndata: {err.to_json()}\n\n".encode()


class CallStream(Response):
    """An ASGI response that relays a gRPC server stream; a subclass says how (`_relay`).

    The response listens for the client going away meanwhile and then cancels the call.

    Args:
        call: The running server-streaming call.
        first: The read of its first message, already started.
        error_of: Status error -> the gateway error it is answered as.
        on_close: Called once when the stream ends, however it ends (with the HTTP status).
        media_type: The Content-Type, when known before the first message.
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[Any, Any],
        first: asyncio.Future[Any],
        *,
        error_of: ErrorOf,
        on_close: Callable[[int], None],
        media_type: str | None = None,
    ) -> None:
        super().__init__(status_code=200, media_type=media_type)
        self._call = call
        self._first = first
        self._error_of = error_of
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.ensure_future(self._relay(scope, send))
        gone = asyncio.ensure_future(_client_gone(receive))
        status = 499
        try:
            done, _ = await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
            if relay in done:
                status = _relay_status(relay)
        finally:
            await self._cleanup(relay, gone)
            self._on_close(status)

    async def _relay(self, scope: Scope, send: Send) -> int:
        """Sends the stream; returns the HTTP status it was answered with."""
        raise NotImplementedError

    async def _answer_error(self, err: grpc.aio.AioRpcError, scope: Scope, send: Send) -> int:
        """Answers a status error that came before any byte with its own HTTP status."""
        error = self._error_of(err)
        await error.response()(scope, _nothing, send)
        return int(error.status)

    async def _cleanup(self, *tasks: asyncio.Future[Any]) -> None:
        self._call.cancel()  # the backend sees CANCELLED when the client went away
        self._first.cancel()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class EventStream(CallStream):
    """Relays a gRPC server stream as Server-Sent Events.

    Args:
        call: The running server-streaming call.
        first: The read of its first message, already started.
        render: Message -> one line of JSON.
        error_of: Status error -> the gateway error to send as the last event.
        keepalive_s: Silence after which a keep-alive comment is sent.
        on_close: Called once when the stream ends, however it ends (with the HTTP status).
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[Any, Any],
        first: asyncio.Future[Any],
        *,
        render: Render,
        error_of: ErrorOf,
        keepalive_s: float,
        on_close: Callable[[int], None],
    ) -> None:
        super().__init__(
            call, first, error_of=error_of, on_close=on_close, media_type="text/event-stream"
        )
        self._render = render
        self._keepalive_s = keepalive_s

    async def _relay(self, scope: Scope, send: Send) -> int:
        pending: asyncio.Future[Any] = self._first
        await asyncio.wait({pending}, timeout=self._keepalive_s)
        if pending.done() and isinstance(pending.exception(), grpc.aio.AioRpcError):
            return await self._answer_error(pending.exception(), scope, send)
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        while True:
            done, _ = await asyncio.wait({pending}, timeout=self._keepalive_s)
            if not done:
                await send_chunk(send, KEEPALIVE)
                continue
            event = self._event(pending)
            if event is None:
                break
            await send_chunk(send, event)
            if event.startswith(b"event: error"):
                break
            pending = asyncio.ensure_future(self._call.read())
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200

    def _event(self, read: asyncio.Future[Any]) -> bytes | None:
        """The event for a finished read; None at the end of the stream."""
        try:
            message = read.result()
        except grpc.aio.AioRpcError as err:
            return error_event(self._error_of(err))
        if message is grpc.aio.EOF:
            return None
        return data_event(self._render(message))


def _relay_status(relay: asyncio.Future[int]) -> int:
    """The status the relay answered; a failed write means the client left."""
    err = relay.exception()
    if err is None:
        return relay.result()
    if not isinstance(err, OSError):
        log.error("stream relay failed", exc_info=err)
    return 499


async def send_chunk(send: Send, chunk: bytes) -> None:
    """One more piece of a response body."""
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _nothing() -> AsgiMessage:
    """A `receive` for an error response: it reads no request (the body was read before)."""
    return {"type": "http.request", "body": b"", "more_body": False}


async def _client_gone(receive: Receive) -> None:
    """Returns when the client disconnects (the request body was read before)."""
    while (await receive())["type"] != "http.disconnect":
        pass
