"""The server side of auth: every call is authorized before its handler runs.

`AuthInterceptor` reads the caller's key from the metadata, checks it against the scope the
method's descriptor requires, and aborts with UNAUTHENTICATED or PERMISSION_DENIED otherwise.
A handler that runs finds the verified key in `current_api_key`.
"""

# grpc ships no type stubs: its classes are `Any` to mypy, so subclassing them is allowed here.
# mypy: allow-subclassing-any

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import grpc

from nexus.common.auth._keys import ApiKey
from nexus.common.auth._scopes import required_scope
from nexus.common.auth._store import KeyStore
from nexus.common.errors import NexusError
from nexus.common.grpc_handlers import Context, abort_handler, wrap_handler

current_api_key: ContextVar[ApiKey | None] = ContextVar("current_api_key", default=None)
"""The verified key of the call being handled (None outside an authorized call)."""

_BEARER = "bearer "


def credentials_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The API key a caller sent: `authorization: Bearer <key>`, else `x-api-key: <key>`."""
    entries = [(k.lower(), v.decode() if isinstance(v, bytes) else v) for k, v in metadata or ()]
    for key, value in entries:
        if key == "authorization" and value[: len(_BEARER)].lower() == _BEARER:
            return value[len(_BEARER) :].strip() or None
    for key, value in entries:
        if key == "x-api-key":
            return value.strip() or None
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authorizes every call of a server with an API key, before its handler runs.

    Args:
        keys: The key store (started).
        exempt_prefixes: Methods that need no key: health checks and reflection by default.
    """

    def __init__(
        self,
        keys: KeyStore,
        *,
        exempt_prefixes: Sequence[str] = ("/grpc.health.v1.", "/grpc.reflection."),
    ) -> None:
        self._keys = keys
        self._exempt = tuple(exempt_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        """The method's handler when the key allows the call; an aborting handler otherwise."""
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(self._exempt):
            return handler
        raw_key = credentials_from_metadata(handler_call_details.invocation_metadata)
        try:
            key = await self._keys.authorize(raw_key, required_scope(method))
        except NexusError as err:
            return abort_handler(handler, grpc.StatusCode[err.code.name], err.message)
        return wrap_handler(handler, lambda context: _as_current(key, context))


@asynccontextmanager
async def _as_current(key: ApiKey, context: Context) -> AsyncIterator[None]:
    token = current_api_key.set(key)
    try:
        yield
    finally:
        # A streaming call whose client left is closed by grpc from another task (another
        # context): there is nothing to restore then, and reset would raise.
        with contextlib.suppress(ValueError):
            current_api_key.reset(token)
