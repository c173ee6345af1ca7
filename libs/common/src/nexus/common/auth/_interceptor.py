"""The server side of auth: every call is authorized before its handler runs.

`AuthInterceptor` reads the caller's key from the metadata, checks it against the scope the
method's descriptor requires, and aborts with UNAUTHENTICATED or PERMISSION_DENIED otherwise.
A handler that runs finds the verified key in `current_api_key`.
"""

# grpc ships no type stubs: its classes are `Any` to mypy, so subclassing them is allowed here.
# mypy: allow-subclassing-any

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar, Token
from typing import Any

import grpc

from nexus.common.auth._keys import ApiKey
from nexus.common.auth._scopes import required_scope
from nexus.common.auth._store import KeyStore
from nexus.common.errors import NexusError
from nexus.common.grpc_handlers import abort_handler, wrap_handler

current_api_key: ContextVar[ApiKey | None] = ContextVar("current_api_key", default=None)
"""The verified key of the call being handled (None outside an authorized call)."""

_BEARER = "bearer "


def credentials_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The API key a caller sent: `authorization: Bearer <key>`, else `x-api-key: <key>`."""
    api_key: str | bytes | None = None
    for key, value in metadata or ():
        name = key.lower()
        if name == "authorization":
            text = _text(value)
            if text[: len(_BEARER)].lower() == _BEARER:
                return text[len(_BEARER) :].strip() or None
        elif name == "x-api-key" and api_key is None:
            api_key = value
    return None if api_key is None else (_text(api_key).strip() or None)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


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
        return wrap_handler(handler, lambda _: _AsCurrent(key))


class _AsCurrent:
    """Makes `key` the call's `current_api_key` while its handler runs (a plain class: it runs
    on every call, and a generator-based context manager costs several times as much)."""

    __slots__ = ("_key", "_token")

    def __init__(self, key: ApiKey) -> None:
        self._key = key
        self._token: Token[ApiKey | None] | None = None

    async def __aenter__(self) -> None:
        self._token = current_api_key.set(self._key)

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: object
    ) -> None:
        # A streaming call whose client left is closed by grpc from another task (another
        # context): there is nothing to restore then, and reset would raise.
        if self._token is not None:
            with contextlib.suppress(ValueError):
                current_api_key.reset(self._token)
