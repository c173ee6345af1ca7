"""`google.api.HttpBody` responses: the raw bytes with their own content type, not JSON (ADR 0030).

An RPC whose response (or `response_body` field) is an HttpBody answers with `content_type` as
the Content-Type and `data` as the body; `extensions` are ignored, as grpc-gateway does. A
server stream of them is one chunked body: the first message's content type, every message's
data in order. Errors keep the one JSON error body, with their status, up to the first message;
an error after it can no longer change the status, so the body is cut short (no final chunk),
which a client sees as an incomplete transfer rather than a complete, truncated file.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import grpc
from google.api import httpbody_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.message import Message
from starlette.responses import Response
from starlette.types import Scope, Send

from nexus.gateway.descriptors import HttpBinding
from nexus.gateway.errors import internal
from nexus.gateway.sse import CallStream, send_chunk

log = logging.getLogger(__name__)

DEFAULT_MEDIA_TYPE = "application/octet-stream"
# A header value: visible ASCII and spaces, no line breaks (a backend's bug must not split
# headers).
_HEADER_VALUE = re.compile(r"^[!-~][ -~]*$")


def http_body_of(binding: HttpBinding, reply: Message) -> httpbody_pb2.HttpBody:
    """The HttpBody of a response: the response itself or its `response_body` field."""
    body = getattr(reply, binding.response_body) if binding.response_body else reply
    assert isinstance(body, httpbody_pb2.HttpBody)
    return body


def content_type(body: httpbody_pb2.HttpBody) -> str:
    """The Content-Type of an HttpBody (application/octet-stream when it says none).

    Raises:
        GatewayError: 500 (logged) when the backend sent one that is no header value.
    """
    declared = str(body.content_type).strip()
    if not declared:
        return DEFAULT_MEDIA_TYPE
    if not _HEADER_VALUE.match(declared):
        log.error("a backend sent an HttpBody content_type that is no header value: %r", declared)
        raise internal()
    return declared


def http_body_response(binding: HttpBinding, reply: Message) -> Response:
    """The HTTP response of a unary HttpBody reply."""
    body = http_body_of(binding, reply)
    # The header is set as it is: `media_type=` would add a charset to text/* types.
    return Response(bytes(body.data), headers={"content-type": content_type(body)})


class HttpBodyStream(CallStream):
    """Relays a server stream of HttpBody messages as one chunked body.

    Args:
        call: The running server-streaming call.
        first: The read of its first message, already started.
        binding: The route (where the HttpBody is in each message).
        error_of: Status error -> the gateway error to answer.
        on_close: Called once when the stream ends, however it ends (with the HTTP status).
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall[Any, Any],
        first: asyncio.Future[Any],
        *,
        binding: HttpBinding,
        error_of: Any,
        on_close: Any,
    ) -> None:
        super().__init__(call, first, error_of=error_of, on_close=on_close)
        self._binding = binding

    async def _relay(self, scope: Scope, send: Send) -> int:
        try:
            message = await self._first
            media_type = DEFAULT_MEDIA_TYPE
            if message is not grpc.aio.EOF:
                media_type = content_type(http_body_of(self._binding, message))
        except grpc.aio.AioRpcError as err:  # before any byte: the error keeps its status
            return await self._answer_error(err, scope, send)
        await send({"type": "http.response.start", "status": 200, "headers": _headers(media_type)})
        while message is not grpc.aio.EOF:
            if data := bytes(http_body_of(self._binding, message).data):
                await send_chunk(send, data)
            try:
                message = await self._call.read()
            except grpc.aio.AioRpcError as err:
                # The status is sent: end without the last chunk, so the body reads as broken.
                error = self._error_of(err)
                log.warning("HttpBody stream cut short: %s %s", error.status, error.message)
                return int(error.status)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200


def _headers(media_type: str) -> list[tuple[bytes, bytes]]:
    # nginx buffers responses by default, which would hold the chunks back.
    return [(b"content-type", media_type.encode("latin-1")), (b"x-accel-buffering", b"no")]
