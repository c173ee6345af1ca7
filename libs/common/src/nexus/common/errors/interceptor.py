"""The one place where exceptions become gRPC statuses.

`ErrorInterceptor` wraps every handler of a server: a `NexusError` becomes its status code with
`google.rpc` details (`BadRequest` field violations, `ErrorInfo` reason); any other exception is
logged with its traceback and becomes INTERNAL with a generic message, so no internal detail
reaches a client.
"""

from __future__ import annotations

# grpc ships no type stubs: its classes are `Any` to mypy, so subclassing them is allowed here.
# mypy: allow-subclassing-any
import asyncio
import logging
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from nexus.common.errors._exceptions import NexusError
from nexus.common.grpc_handlers import Context, WrappingInterceptor, wrap_handler

log = logging.getLogger(__name__)

ERROR_DOMAIN = "nexus.ai"
INTERNAL_MESSAGE = "internal error; the server logged the details"


def to_status(err: NexusError) -> grpc.Status:
    """The gRPC status (code, message, rich details) for a domain error."""
    code = grpc.StatusCode[err.code.name]
    details: list[any_pb2.Any] = []
    if err.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in err.violations
            ]
        )
        details.append(_pack(bad))
    if err.reason:
        details.append(_pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN)))
    status = status_pb2.Status(code=code.value[0], message=err.message, details=details)
    return rpc_status.to_status(status)


def internal_status() -> grpc.Status:
    """The status for an unexpected exception: INTERNAL with a generic message."""
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    return rpc_status.to_status(status)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def abort_for(err: BaseException, context: Context) -> None:
    """Aborts the RPC with the status that `err` maps to (logging unexpected errors)."""
    if isinstance(err, NexusError):
        status = to_status(err)
    else:
        log.error("unexpected error in %s", _method(context), exc_info=err)
        trace.get_current_span().record_exception(err)
        status = internal_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


def _method(context: Context) -> str:
    details = getattr(getattr(context, "_rpc_event", None), "call_details", None)
    method = getattr(details, "method", b"rpc")
    return method.decode() if isinstance(method, bytes) else str(method)


def _passes_through(err: BaseException) -> bool:
    """Aborts that a handler made itself, cancellations, and the closing of a streaming
    handler whose client left (GeneratorExit) are not errors to map."""
    return isinstance(err, grpc.aio.AbortError | asyncio.CancelledError | GeneratorExit)


class mapping_errors:  # noqa: N801 (used like the function it replaced: `mapping_errors(ctx)`)
    """Turns an exception raised inside into an abort with its mapped status.

    A plain class rather than `contextlib.asynccontextmanager`: it runs on every call, and a
    generator-based context manager costs several times as much to enter and leave.
    """

    __slots__ = ("_context",)

    def __init__(self, context: Context) -> None:
        self._context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: object
    ) -> bool:
        if err is None or _passes_through(err):
            return False
        await abort_for(err, self._context)
        return True


class ErrorInterceptor(WrappingInterceptor):
    """Maps exceptions of every handler to statuses; install it inside the others (only the
    field-rules and idempotency interceptors go between it and the servicers)."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler, its exceptions mapped to statuses."""
        return wrap_handler(handler, mapping_errors)
