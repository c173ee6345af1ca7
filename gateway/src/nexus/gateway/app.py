"""The Starlette application: probes, the OpenAPI document, the OpenAI-compatible routes, and
one catch-all route that the generic gateway handler serves."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from nexus.gateway.backends import SERVING, BackendPool
from nexus.gateway.descriptors import HttpBinding, discover
from nexus.gateway.errors import GatewayError, uri_too_long
from nexus.gateway.gateway import Gateway
from nexus.gateway.keys import Authorizer
from nexus.gateway.openai import BACKEND as OPENAI_BACKEND
from nexus.gateway.openai import add_openai, openai_routes
from nexus.gateway.openai.surface import surface_error
from nexus.gateway.openapi import build_openapi
from nexus.gateway.routing import Router
from nexus.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

BACKEND_NOT_READY = "BACKEND_NOT_READY"
NATS_NOT_CONNECTED = "NATS_NOT_CONNECTED"
Endpoint = Callable[[Request], Awaitable[Response]]
_CORS_HEADERS = [
    "authorization",
    "x-api-key",
    "content-type",
    "x-nexus-timeout",
    "traceparent",
    "idempotency-key",
]


def build_app(
    settings: GatewaySettings,
    *,
    keys: Authorizer | None = None,
    bindings: Sequence[HttpBinding] | None = None,
) -> Starlette:
    """The gateway as an ASGI application.

    Args:
        settings: The gateway's settings (backends, limits).
        keys: The API-key store (`nexus.common.auth.KeyStore`); None when auth is off.
        bindings: The routes; by default every annotated RPC under `nexus.api`.

    Returns:
        The app; `app.state.gateway` is its `Gateway`. Its lifespan closes the backend channels.
    """
    router = Router(discover() if bindings is None else bindings)
    pool = BackendPool(settings.backends, max_message_bytes=settings.max_message_bytes)
    gateway = Gateway(settings, router, pool, keys)
    document = build_openapi(router.bindings, secured=keys is not None, backends=pool.names)
    if OPENAI_BACKEND in pool:
        add_openai(document)

    async def openapi(_: Request) -> Response:
        return JSONResponse(document)

    async def readyz(_: Request) -> Response:
        return await _readiness(pool, settings.readiness_timeout_s, keys)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await pool.close(settings.shutdown_grace_s)
        gateway.close()

    methods = _methods(router)
    app = Starlette(
        routes=[
            Route("/healthz", _get_only(_healthz), methods=methods),
            Route("/readyz", _get_only(readyz), methods=methods),
            Route("/openapi.json", _get_only(openapi), methods=methods),
            *openai_routes(gateway),  # OpenAI-compatible paths, before the catch-all
            Route("/{path:path}", gateway.handle, methods=methods),
        ],
        middleware=_middleware(settings),
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.gateway = gateway
    return app


def _methods(router: Router) -> list[str]:
    """Methods the catch-all route takes: the usual ones (so that a wrong one gets the 405 of the
    router, which names the allowed ones) and any custom verb of a rule."""
    return sorted(
        {"GET", "POST", "PUT", "PATCH", "DELETE"} | {b.http_method for b in router.bindings}
    )


class _UrlLimit:
    """Answers 414 for a URL longer than `limit` bytes, on every route (in the error body of the
    surface the path belongs to)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            if length > self.limit:
                error = surface_error(scope["path"], uri_too_long(self.limit))
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _middleware(settings: GatewaySettings) -> list[Middleware]:
    limit = Middleware(_UrlLimit, limit=settings.max_url_bytes)
    if not settings.cors_origins:
        return [limit]
    cors = Middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=_CORS_HEADERS,
        expose_headers=["retry-after"],
    )
    return [cors, limit]


def _get_only(endpoint: Endpoint) -> Endpoint:
    """The gateway's own GET endpoints, answering other methods with 405 (they take every
    method, or the catch-all route would answer them with 404)."""

    async def guarded(request: Request) -> Response:
        if request.method in ("GET", "HEAD"):
            return await endpoint(request)
        message = f"{request.method} is not allowed on {request.url.path}; allowed: GET"
        error = GatewayError(
            grpc.StatusCode.UNIMPLEMENTED, message, headers={"Allow": "GET"}, status=405
        )
        return error.response()

    return guarded


async def _healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _readiness(pool: BackendPool, timeout_s: float, keys: Authorizer | None) -> Response:
    """200 when every backend is SERVING and (with auth on) the key store's NATS connection is
    up, else 503 naming what is not."""
    states = await pool.readiness(timeout_s)
    waiting = {name: state for name, state in states.items() if state != SERVING}
    nats_down = keys is not None and not keys.connected
    if not waiting and not nats_down:
        return JSONResponse({"status": "ready", "backends": states})
    problems = ["NATS not connected"] if nats_down else []
    if waiting:
        listed = ", ".join(f"{name} ({state})" for name, state in waiting.items())
        problems.append(f"backends not ready: {listed}")
    reason = NATS_NOT_CONNECTED if nats_down else BACKEND_NOT_READY
    error = GatewayError(grpc.StatusCode.UNAVAILABLE, "; ".join(problems), reason=reason)
    return error.response()


_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
}


async def _http_exception(_: Request, exc: Exception) -> Response:
    """Starlette's own errors (a POST to /healthz) in the one error body."""
    assert isinstance(exc, HTTPException)
    code = _STATUS_CODES.get(exc.status_code, grpc.StatusCode.UNKNOWN)
    error = GatewayError(code, exc.detail, headers=exc.headers, status=exc.status_code)
    return error.response()
