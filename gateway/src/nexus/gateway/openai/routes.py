"""The OpenAI-compatible endpoints: OpenAI JSON in and out, the llm service's RPCs behind.

`POST /v1/chat/completions` (unary, or SSE chunks with `stream: true`), `POST /v1/embeddings`,
`GET /v1/models` and `GET /v1/models/{model}`. Each request takes the gateway's own pipeline:
a server span, the key's scope (the RPC's `required_scope`, "llm:invoke") and rate limit, the
body limit (413), the deadline headers, and the key and trace context forwarded to the backend.
Only the body formats differ, errors included (`nexus.gateway.openai.errors`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import Span
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.common.paging import MAX_PAGE_SIZE
from nexus.gateway import tracing
from nexus.gateway.descriptors import HttpBinding, service_bindings
from nexus.gateway.errors import INTERNAL_MESSAGE, GatewayError, from_rpc_error
from nexus.gateway.gateway import (
    Gateway,
    call_metadata,
    deadline,
    idempotency,
    raw_path,
    read_body,
    require_json,
)
from nexus.gateway.keys import raw_key
from nexus.gateway.openai.errors import (
    SERVER_ERROR,
    OpenAIError,
    from_gateway_error,
    model_not_found,
)
from nexus.gateway.openai.requests import (
    CACHE_HEADER,
    ChatCompletionCall,
    cache_mode,
    chat_completion_call,
    embedding_call,
    parse_json,
)
from nexus.gateway.openai.responses import (
    ChunkRenderer,
    cached_header,
    chat_completion,
    embeddings,
    find_model,
    model_list,
    model_object,
)
from nexus.gateway.openai.streaming import ChunkStream
from nexus.gateway.openai.surface import (
    CHAT_PATH,
    EMBEDDINGS_PATH,
    MODEL_PATH,
    MODELS_PATH,
    unknown_url,
)
from nexus.gateway.transcode import dumps

log = logging.getLogger(__name__)

BACKEND = "llm"
"""The backend serving the llm service's RPCs (the `<area>` of `nexus.llm.v1`)."""


@dataclass(frozen=True)
class Call:
    """One admitted request.

    Attributes:
        request: The HTTP request.
        key: The caller's raw API key, if any (forwarded to the backend).
        span: The request's server span.
        idempotency_key: The client's `Idempotency-Key`, checked, if any (forwarded: the llm
            service runs a unary Chat or Embed with a key once, ADR 0019).
    """

    request: Request
    key: str | None
    span: Span
    idempotency_key: str | None = None

    def metadata(self) -> list[tuple[str, str]]:
        """The backend call's metadata: the key, the trace context, the idempotency key."""
        return call_metadata(self.key, self.idempotency_key)


Handler = Callable[[Call], Awaitable[Response]]


class OpenAIRoutes:
    """The OpenAI-compatible routes of a gateway.

    Args:
        gateway: The gateway whose pipeline (pool, keys, limits, settings) they use.
    """

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        service = pb.DESCRIPTOR.services_by_name["LlmService"]
        self._rpcs: dict[str, HttpBinding] = {b.method.name: b for b in service_bindings(service)}

    def routes(self) -> list[Route]:
        """The Starlette routes; mount them before the gateway's catch-all.

        They take every method (a wrong one is OpenAI's 405, not Starlette's), and every path
        under the surface is theirs (one no route serves is OpenAI's 404, not the native one).
        """
        return [
            self._route(CHAT_PATH, "POST", "Chat", self._chat),
            self._route(EMBEDDINGS_PATH, "POST", "Embed", self._embeddings),
            self._route(MODELS_PATH, "GET", "ListModels", self._models),
            # A model id may hold "/" ("openai/gpt-4o"): the rest of the path is the id.
            _rest_route(
                f"{MODELS_PATH}/{{model:path}}",
                self._endpoint(MODEL_PATH, "GET", "ListModels", self._model),
            ),
            _rest_route(f"{CHAT_PATH}/{{rest:path}}", _unknown_url),
            _rest_route(f"{EMBEDDINGS_PATH}/{{rest:path}}", _unknown_url),
        ]

    def _route(self, path: str, method: str, rpc: str, handler: Handler) -> Route:
        return _any_method(Route(path, self._endpoint(path, method, rpc, handler)))

    def _endpoint(
        self, template: str, method: str, rpc: str, handler: Handler
    ) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of one route: a server span around the admitted handler."""
        full_method = self._rpcs[rpc].full_method

        async def endpoint(request: Request) -> Response:
            span = tracing.start_server_span(request.method, raw_path(request), request.headers)
            with trace.use_span(span, end_on_exit=False):
                tracing.name_route(span, request.method, template, full_method)
                response = await self._respond(request, method, rpc, handler, span)
            if not isinstance(response, ChunkStream):  # a stream ends its span when it closes
                tracing.finish(span, response.status_code)
            return response

        return endpoint

    async def _respond(
        self, request: Request, method: str, rpc: str, handler: Handler, span: Span
    ) -> Response:
        """Checks the method, the backend and the key, then runs the handler; every error in
        OpenAI's body."""
        try:
            _check_method(request.method, method)
            if BACKEND not in self._gateway.pool:
                message = f"No {BACKEND!r} service in this deployment: the OpenAI API is off."
                raise OpenAIError(404, message, code="not_found")
            key = raw_key(request.headers)
            await self._gateway.admit(self._rpcs[rpc].scope, key, request)
            return await handler(Call(request, key, span, idempotency(request.headers)))
        except OpenAIError as err:
            return err.response()
        except GatewayError as err:
            return from_gateway_error(err).response()
        except Exception as err:  # details to the log and the trace, never to the client
            log.exception("OpenAI surface error on %s %s", request.method, request.url.path)
            span.record_exception(err)
            return OpenAIError(500, INTERNAL_MESSAGE, kind=SERVER_ERROR).response()

    # Endpoints.

    async def _chat(self, call: Call) -> Response:
        body = await self._body(call.request)
        mode = cache_mode(call.request.headers.get(CACHE_HEADER))
        chat = chat_completion_call(body, mode)
        if chat.stream:
            return self._stream_chat(chat, call)
        reply = await self._unary("Chat", chat.request, call)
        return _json(chat_completion(reply), cached_header(reply.cached))

    def _stream_chat(self, chat: ChatCompletionCall, call: Call) -> Response:
        settings = self._gateway.settings
        binding = self._rpcs["StreamChat"]
        tracing.name_route(call.span, call.request.method, CHAT_PATH, binding.full_method)
        stream = self._gateway.pool.stream(BACKEND, binding)(
            pb.StreamChatRequest(request=chat.request),
            timeout=deadline(call.request.headers, True, settings),
            metadata=call.metadata(),  # StreamChat ignores an idempotency key, as every stream
            wait_for_ready=False,
        )
        span = call.span
        return ChunkStream(
            stream,
            renderer=ChunkRenderer(include_usage=chat.include_usage),
            error_of=lambda err: from_gateway_error(from_rpc_error(err, BACKEND)),
            keepalive_s=settings.sse_keepalive_s,
            on_close=lambda status: tracing.finish(span, status),
        )

    async def _embeddings(self, call: Call) -> Response:
        embedding = embedding_call(await self._body(call.request))
        reply = await self._unary("Embed", embedding.request, call)
        return _json(embeddings(reply, embedding.encoding_format))

    async def _models(self, call: Call) -> Response:
        reply = await self._served_models(call)
        return _json(model_list(reply))

    async def _model(self, call: Call) -> Response:
        model = str(call.request.path_params["model"])
        reply = await self._served_models(call)
        info = find_model(reply, model)
        if info is None:
            raise model_not_found(model)
        return _json(model_object(info))

    # Pieces.

    async def _served_models(self, call: Call) -> pb.ListModelsResponse:
        """Every served model, all pages of ListModels: OpenAI's list of models has none."""
        request = pb.ListModelsRequest(page_size=MAX_PAGE_SIZE)
        reply: pb.ListModelsResponse = await self._unary("ListModels", request, call)
        while reply.next_page_token:
            request.page_token = reply.next_page_token
            page = await self._unary("ListModels", request, call)
            reply.models.extend(page.models)
            reply.next_page_token = page.next_page_token
        return reply

    async def _body(self, request: Request) -> dict[str, Any]:
        """The JSON body: declared as JSON or as nothing (415 otherwise, before it is read),
        within the gateway's size limit (413 beyond it)."""
        require_json(request.headers)
        return parse_json(await read_body(request, self._gateway.settings.max_body_bytes))

    async def _unary(self, rpc: str, message: Message, call: Call) -> Any:
        """Calls a unary RPC of the llm backend with the caller's key, trace and deadline."""
        binding = self._rpcs[rpc]
        timeout = deadline(call.request.headers, False, self._gateway.settings)
        try:
            return await self._gateway.pool.unary(BACKEND, binding)(
                message, timeout=timeout, metadata=call.metadata(), wait_for_ready=False
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, BACKEND) from err


def _rest_route(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    """A route taking every method whose trailing `{name:path}` takes any characters.

    Starlette's `.*` stops at a newline, so `/v1/models/a%0Ab` would miss the route, and its `$`
    matches before a final newline, so `/v1/models/a%0A` would be served as model `a`.
    """
    route = _any_method(Route(path, endpoint))
    route.path_regex = re.compile(route.path_regex.pattern, re.DOTALL)
    return route


def _any_method(route: Route) -> Route:
    """The route for every method (Starlette's default for a function is GET and HEAD)."""
    route.methods = None
    return route


async def _unknown_url(request: Request) -> Response:
    return unknown_url(request.method, request.url.path).response()


def _check_method(actual: str, allowed: str) -> None:
    """405 for another method (HEAD goes with GET)."""
    if actual == allowed or (actual == "HEAD" and allowed == "GET"):
        return
    message = f"{actual} is not allowed here; allowed: {allowed}"
    raise OpenAIError(405, message, code="method_not_allowed", headers={"Allow": allowed})


def _json(value: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(dumps(value), headers=headers, media_type="application/json")


def openai_routes(gateway: Gateway) -> list[Route]:
    """The OpenAI-compatible routes of `gateway` (answering 404 when it has no llm backend)."""
    return OpenAIRoutes(gateway).routes()
