"""Wrapping grpc.aio method handlers: what the error, tracing, metrics and auth interceptors share.

A server interceptor gets the method's `RpcMethodHandler` from its continuation and returns
another. `wrap_handler` runs the handler's behaviour inside an async context manager (a span, a
timer, a context variable), whatever the handler's kind (unary or streaming on either side) and
style (coroutine, async generator); `abort_handler` makes a handler of the same kind that only
aborts the call. Synchronous behaviours (run by grpc.aio in its thread pool) are left unwrapped:
an async wrapper would run them on the event loop.
"""

# grpc ships no type stubs: its classes are `Any` to mypy, so subclassing them is allowed here.
# mypy: allow-subclassing-any

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

from nexus.common.errors import NexusError

Context = Any
"""A `grpc.aio.ServicerContext` (grpc has no type stubs)."""

Around = Callable[[Context], AbstractAsyncContextManager[None]]
"""Makes the context manager that one call of a behaviour runs inside."""

Behavior = Callable[[Any, Context], Any]

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
_CONSTRUCTORS: dict[str, Callable[..., Any]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def handler_kind(handler: grpc.RpcMethodHandler) -> tuple[str, Behavior]:
    """The handler's kind ("unary_unary", ...) and its behaviour."""
    for kind in _KINDS:
        behavior = getattr(handler, kind, None)
        if behavior is not None:
            return kind, behavior
    raise ValueError("method handler has no behaviour")


def _rebuild(handler: grpc.RpcMethodHandler, kind: str, behavior: Behavior) -> Any:
    return _CONSTRUCTORS[kind](
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same handler, its behaviour running inside `around(context)` on every call.

    For a streaming response the context manager stays open until the last message is sent.
    """
    kind, behavior = handler_kind(handler)
    if inspect.iscoroutinefunction(behavior):  # the common case first: it runs on every call
        return _rebuild(handler, kind, _wrap_coroutine(behavior, around))
    if inspect.isasyncgenfunction(behavior):
        return _rebuild(handler, kind, _wrap_generator(behavior, around))
    return handler


def _wrap_coroutine(behavior: Behavior, around: Around) -> Behavior:
    async def wrapped(request: Any, context: Context) -> Any:
        async with around(context):
            return await behavior(request, context)

    return wrapped


def _wrap_generator(behavior: Behavior, around: Around) -> Behavior:
    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        async with around(context):
            async for response in behavior(request, context):
                yield response

    return wrapped


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps each method's handler once (`wrap`) and reuses the wrapping.

    Installed inside the others, nearest the servicer, it gets the servicer's own handlers,
    which stay the same from call to call, so the wrapping is made once per method.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler that serves `method` in place of `handler`."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def checking_requests(
    handler: grpc.RpcMethodHandler, check: Callable[[Any], None]
) -> grpc.RpcMethodHandler:
    """The same handler, calling `check(request)` before its behaviour runs (for handlers that
    take one request; `check` raises to refuse it)."""
    kind, behavior = handler_kind(handler)
    if kind.startswith("stream_"):
        return handler
    if inspect.iscoroutinefunction(behavior):

        async def checked(request: Any, context: Context) -> Any:
            check(request)
            return await behavior(request, context)

        return _rebuild(handler, kind, checked)
    if inspect.isasyncgenfunction(behavior):

        async def checked_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            check(request)
            async for response in behavior(request, context):
                yield response

        return _rebuild(handler, kind, checked_stream)
    return handler


def abort_handler(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that aborts every call with `code`."""

    async def abort(request: Any, context: Context) -> None:
        await context.abort(code, message)

    kind, _ = handler_kind(handler)
    # A coroutine serves every kind: grpc.aio treats one on a streaming response as a writer.
    return _rebuild(handler, kind, abort)


def status_of(exc: BaseException | None, context: Context) -> grpc.StatusCode:
    """The status a call ends with, from the exception it raised (if any) and its context.

    Aborts and explicit `set_code` leave the code on the context; a `NexusError` that no inner
    interceptor mapped carries its own; any other exception counts as INTERNAL, which is what
    the platform's error interceptor turns it into.
    """
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):  # GeneratorExit: client left
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, NexusError):
        return grpc.StatusCode[exc.code.name]
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if exc is None or _is_abort(exc) else grpc.StatusCode.INTERNAL


def _is_abort(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AbortError)
