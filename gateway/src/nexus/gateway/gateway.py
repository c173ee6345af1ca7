"""The request pipeline: route -> authorize -> rate limit -> read body -> transcode -> call.

One generic handler serves every binding; nothing in it knows an endpoint.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

import grpc
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import Span
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from nexus.common.errors import NexusError
from nexus.common.idempotency import KEY_FIELD, METADATA_KEY, check_idempotency_key
from nexus.common.routing import backend_named
from nexus.gateway import tracing
from nexus.gateway.backends import BACKEND_NOT_FOUND, BackendPool
from nexus.gateway.descriptors import HttpBinding
from nexus.gateway.errors import (
    GatewayError,
    from_nexus_error,
    from_rpc_error,
    internal,
    not_found,
    retry_after_seconds,
)
from nexus.gateway.httpbody import HttpBodyStream, http_body_response
from nexus.gateway.keys import ApiKeyLike, Authorizer, raw_key
from nexus.gateway.multipart import FORM_DATA, FormLimits, boundary_of, bounded, read_form
from nexus.gateway.ratelimit import RateLimiter
from nexus.gateway.routing import Router
from nexus.gateway.settings import GatewaySettings
from nexus.gateway.sse import CallStream, EventStream
from nexus.gateway.transcode import (
    PathValues,
    build_form_request,
    build_request,
    dumps,
    field_value,
    response_json,
)

log = logging.getLogger(__name__)

RATE_LIMITED = "RATE_LIMITED"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
_CHARSET = re.compile(r"charset\s*=\s*\"?([^\";\s]+)", re.IGNORECASE)
T = TypeVar("T")
_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class Gateway:
    """Serves every binding over one generic handler.

    Args:
        settings: Limits, timeouts, rate limits.
        router: The routes.
        pool: Channels to the backends.
        keys: The API-key store; None when auth is off.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        router: Router,
        pool: BackendPool,
        keys: Authorizer | None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.pool = pool
        self.keys = keys
        self.limiter = RateLimiter(
            burst=settings.rate_limit_burst, max_keys=settings.rate_limit_max_keys
        )
        self.workers = ThreadPoolExecutor(settings.transcode_workers, "gateway-transcode")

    async def handle(self, request: Request) -> Response:
        """The Starlette endpoint for every proto route."""
        path = raw_path(request)
        span = tracing.start_server_span(request.method, path, request.headers)
        with trace.use_span(span, end_on_exit=False):
            response = await self._respond(request, path, span)
        if not isinstance(response, CallStream):  # a stream ends its span when it closes
            tracing.finish(span, response.status_code)
        return response

    async def _respond(self, request: Request, path: str, span: Span) -> Response:
        try:
            binding, values = self.router.match(request.method, path)
            tracing.name_route(span, request.method, binding.template.template, binding.full_method)
            return await self._serve(binding, values, request, span)
        except GatewayError as err:
            return err.response()
        except Exception as err:  # details to the log and the trace, never to the client
            log.exception("gateway error on %s %s", request.method, path)
            span.record_exception(err)
            return internal().response()

    async def _serve(
        self, binding: HttpBinding, values: PathValues, request: Request, span: Span
    ) -> Response:
        key = raw_key(request.headers)
        await self.admit(binding.scope, key, request)
        message = await self._request_message(binding, values, request)
        backend = self._backend(binding, message)
        metadata = call_metadata(key, idempotency(request.headers))
        deadline_s = deadline(request.headers, binding.server_streaming, self.settings)
        if binding.server_streaming:
            return await self._stream(binding, backend, message, metadata, deadline_s, span)
        return await self._unary(binding, backend, message, metadata, deadline_s)

    async def _request_message(
        self, binding: HttpBinding, values: PathValues, request: Request
    ) -> Message:
        """The request message from the path, the query and the body (JSON, or a
        multipart/form-data form where the route takes one)."""
        boundary = (
            body_media(request.headers, form=bool(binding.form_fields)) if binding.body else None
        )
        if boundary is None:
            body = await read_body(request, self.settings.max_body_bytes)
            return await self._transcode(binding, values, query_items(request), body)
        parts = await read_form(
            request.stream(),
            boundary,
            self.form_limits,
            request.headers.get("content-length", ""),
        )
        return build_form_request(binding, values, query_items(request), parts)

    @property
    def form_limits(self) -> FormLimits:
        """The limits of a multipart/form-data body."""
        settings = self.settings
        return FormLimits(settings.max_body_bytes, settings.max_part_bytes, settings.max_form_parts)

    async def admit(self, scope: str, key: str | None, request: Request) -> None:
        """Authorizes the caller for `scope` (when auth is on), then takes a rate-limit token.

        Raises:
            GatewayError: 401 or 403 for the key, 429 over the rate limit.
        """
        api_key: ApiKeyLike | None = None
        if self.keys is not None:
            try:
                api_key = await self.keys.authorize(key, scope)
            except NexusError as err:
                raise from_nexus_error(err) from err
        self._rate_limit(api_key, request)

    def _rate_limit(self, api_key: ApiKeyLike | None, request: Request) -> None:
        rate = self.settings.rate_limit_per_minute
        if api_key is not None:
            bucket, rate = f"key:{api_key.id}", api_key.rate_limit_per_minute or rate
        else:  # auth off: the client's address stands in for the key
            bucket = f"addr:{request.client.host if request.client else ''}"
        wait_s = self.limiter.acquire(bucket, rate)
        if wait_s > 0:
            raise GatewayError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {rate} requests per minute exceeded",
                reason=RATE_LIMITED,
                headers={"Retry-After": str(retry_after_seconds(wait_s))},
            )

    async def _transcode(
        self, binding: HttpBinding, values: PathValues, query: list[tuple[str, str]], body: bytes
    ) -> Message:
        """The request message; a large body is parsed on a worker thread, so the event loop
        keeps serving other requests (and probes) while it is."""
        if len(body) <= self.settings.offload_bytes:
            return build_request(binding, values, query, body)
        return await self.offload(
            functools.partial(build_request, binding, values, query, body, yielding=True)
        )

    async def offload(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` on the gateway's worker threads (`transcode_workers` of them)."""
        return await asyncio.get_running_loop().run_in_executor(self.workers, work, *args)

    def close(self) -> None:
        """Lets the worker threads go (at shutdown, after in-flight requests)."""
        self.workers.shutdown(wait=False, cancel_futures=True)

    async def _render(self, binding: HttpBinding, reply: Message) -> str:
        """The JSON text of a response; a large one is made on a worker thread."""
        if reply.ByteSize() <= self.settings.offload_bytes:
            return dumps(response_json(binding, reply))
        return await self.offload(lambda: dumps(response_json(binding, reply)))

    def _backend(self, binding: HttpBinding, message: Message) -> str:
        if not binding.route_field:
            return binding.backend
        backend = backend_named(str(field_value(message, tuple(binding.route_field.split(".")))))
        if backend not in self.pool:
            raise not_found(f"no service {backend!r} in this deployment", BACKEND_NOT_FOUND)
        return backend

    async def _unary(
        self,
        binding: HttpBinding,
        backend: str,
        message: Message,
        metadata: list[tuple[str, str]],
        deadline_s: float,
    ) -> Response:
        call = self.pool.unary(backend, binding)
        try:
            reply = await call(message, timeout=deadline_s, metadata=metadata, wait_for_ready=False)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, backend) from err
        if binding.http_body:
            return http_body_response(binding, reply)
        return Response(await self._render(binding, reply), media_type="application/json")

    async def _stream(
        self,
        binding: HttpBinding,
        backend: str,
        message: Message,
        metadata: list[tuple[str, str]],
        deadline_s: float,
        span: Span,
    ) -> Response:
        call = self.pool.stream(backend, binding)(
            message, timeout=deadline_s, metadata=metadata, wait_for_ready=False
        )
        first: asyncio.Future[Any] = asyncio.ensure_future(call.read())
        if binding.http_body:
            return HttpBodyStream(
                call,
                first,
                binding=binding,
                error_of=lambda err: from_rpc_error(err, backend),
                on_close=lambda status: tracing.finish(span, status),
            )
        return EventStream(
            call,
            first,
            render=lambda reply: dumps(response_json(binding, reply)),
            error_of=lambda err: from_rpc_error(err, backend),
            keepalive_s=self.settings.sse_keepalive_s,
            on_close=lambda status: tracing.finish(span, status),
        )


def raw_path(request: Request) -> str:
    """The request path still percent-encoded, as path templates match it."""
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.decode("latin-1").split("?", 1)[0]
    return quote(request.url.path)


def query_items(request: Request) -> list[tuple[str, str]]:
    """The query parameters in order; parsed only when there are any (most calls have none)."""
    if not request.scope.get("query_string"):
        return []
    return request.query_params.multi_items()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes.

    Content-Length is checked first, and the bytes are counted too (a chunked body has no
    length, and a length may lie).
    """
    declared = request.headers.get("content-length", "")
    chunks = [chunk async for chunk in bounded(request.stream(), limit, declared)]
    return b"".join(chunks)


def body_media(headers: Headers, *, form: bool) -> bytes | None:
    """What a body is: JSON (None), or, where the route takes forms (`form`), a
    multipart/form-data form (its boundary).

    Raises:
        GatewayError: 415 UNSUPPORTED_MEDIA_TYPE for anything else; 400 for a form without a
            boundary.
    """
    declared = headers.get("content-type")
    if form and declared is not None and _media_type(declared) == FORM_DATA:
        return boundary_of(declared)
    require_json(headers, also=FORM_DATA if form else "")
    return None


def _media_type(declared: str) -> str:
    return declared.partition(";")[0].strip().lower()


def require_json(headers: Headers, *, also: str = "") -> None:
    """Refuses a body declared as anything but JSON (415); one declared as nothing is read as
    JSON. `also` names another media type the route takes, for the message.

    Raises:
        GatewayError: 415 UNSUPPORTED_MEDIA_TYPE.
    """
    declared = headers.get("content-type")
    if declared is None:
        return
    media_type, _, parameters = declared.partition(";")
    media_type = media_type.strip().lower()
    charset = _CHARSET.search(parameters)
    is_json = media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
    if is_json and (charset is None or charset[1].lower() in ("utf-8", "utf8")):
        return
    expected = "Content-Type: application/json" + (f" or {also}" if also else "")
    raise GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the body must be JSON ({expected}), not {declared!r}",
        reason=UNSUPPORTED_MEDIA_TYPE,
        status=415,
    )


def deadline(headers: Headers, streaming: bool, settings: GatewaySettings) -> float:
    """Seconds the backend call may take: what the client asks for, capped.

    The client asks with `X-Nexus-Timeout: <seconds>` or gRPC's `grpc-timeout: <n><unit>`.
    """
    if streaming:
        default, cap = settings.stream_timeout_s, settings.stream_timeout_s
    else:
        default, cap = settings.default_timeout_s, settings.max_timeout_s
    asked = _asked_timeout(headers)
    return min(asked if asked is not None else default, cap)


def _asked_timeout(headers: Headers) -> float | None:
    if value := headers.get("x-nexus-timeout"):
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds < float("inf"):
            raise GatewayError.bad_field(
                "X-Nexus-Timeout", f"not a positive number of seconds: {value!r}"
            )
        return seconds
    if value := headers.get("grpc-timeout"):
        parsed = _GRPC_TIMEOUT.match(value)
        if parsed is None or int(parsed[1]) == 0:
            raise GatewayError.bad_field("grpc-timeout", f"not a gRPC timeout: {value!r}")
        return int(parsed[1]) * _GRPC_UNITS[parsed[2]]
    return None


def call_metadata(key: str | None, idempotency_key: str | None = None) -> list[tuple[str, str]]:
    """gRPC metadata for a backend call: the caller's key (services check it again), the trace
    context, and the client's idempotency key (the service makes the call idempotent)."""
    metadata = tracing.outgoing_metadata()
    # gRPC metadata must be printable ASCII; no valid key is anything else.
    if key and key.isascii() and key.isprintable():
        metadata.append(("authorization", f"Bearer {key}"))
    if idempotency_key is not None:
        metadata.append((METADATA_KEY, idempotency_key))
    return metadata


def idempotency(headers: Headers) -> str | None:
    """The client's `Idempotency-Key` header, checked (ADR 0019), or None.

    Raises:
        GatewayError: 400 for a key that is empty, too long or not printable ASCII.
    """
    value = headers.get(KEY_FIELD)
    if value is None:
        return None
    try:
        return check_idempotency_key(value)
    except NexusError as err:
        raise from_nexus_error(err) from err
