"""The gRPC side of idempotency: the `idempotency-key` metadata on every mutating call.

`IdempotencyInterceptor` wraps every unary method that is not a read (reads are the RPCs whose
HTTP binding is GET). A call without the key runs as before. A call with it runs through the
`IdempotencyStore`: once per key and caller; a retry gets the first call's response or error
again, byte for byte, without running anything. The key is scoped to the caller's API key, so
two callers never see each other's outcomes.
"""

# grpc ships no type stubs: its classes are `Any` to mypy, so subclassing them is allowed here.
# mypy: allow-subclassing-any

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import annotations_pb2
from google.protobuf import descriptor_pool
from google.rpc import status_pb2
from grpc_status import rpc_status

from nexus.common.auth import current_api_key, load_api_descriptors
from nexus.common.errors import ErrorCode, FieldViolation, InvalidArgument, NexusError
from nexus.common.errors.interceptor import internal_status, to_status
from nexus.common.grpc_handlers import Context, WrappingInterceptor, handler_kind
from nexus.common.idempotency._store import KEY_FIELD, IdempotencyStore, Outcome, not_kept

log = logging.getLogger(__name__)

METADATA_KEY = "idempotency-key"
"""The gRPC metadata key; the gateway forwards the HTTP `Idempotency-Key` header as it."""

MAX_KEY_LENGTH = 255

_STATUS_DETAILS = "grpc-status-details-bin"
_RETRYABLE = frozenset(
    {
        ErrorCode.UNAVAILABLE,
        ErrorCode.ABORTED,
        ErrorCode.RESOURCE_EXHAUSTED,
        ErrorCode.DEADLINE_EXCEEDED,
    }
)
"""Errors that say "not now" rather than "no": not kept, so a retry runs the call again."""


def check_idempotency_key(value: str) -> str:
    """The key a client sent, checked: 1 to 255 printable ASCII characters (a UUID is best).

    An HTTP structured-field string may come quoted (`"8e03978e-..."`); the quotes are not part
    of the key.

    Raises:
        InvalidArgument: An empty, long or non-ASCII key.
    """
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if 0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable():
        return key
    description = f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, such as a UUID"
    raise InvalidArgument(
        f"{KEY_FIELD} {description}", violations=[FieldViolation(KEY_FIELD, description)]
    )


def idempotency_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The checked key in a call's metadata, or None when the caller sent none."""
    for name, value in metadata or ():
        if name == METADATA_KEY:
            return check_idempotency_key(value if isinstance(value, str) else value.decode())
    return None


@functools.lru_cache(maxsize=4096)
def takes_idempotency_key(full_method: str) -> bool:
    """Whether a method honours the key: every method but reads (bound to HTTP GET) and gRPC's
    own services (health, reflection). A method unknown to `nexus.api` honours it."""
    if full_method.startswith("/grpc."):
        return False
    load_api_descriptors()
    name = full_method.strip("/").replace("/", ".")
    try:
        method = descriptor_pool.Default().FindMethodByName(name)
    except KeyError:
        return True
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    return bool(rule.WhichOneof("pattern") != "get")


def fingerprint(full_method: str, request: Any) -> str:
    """What a call asked for: its method and its request, serialized deterministically."""
    digest = hashlib.sha256(full_method.encode())
    digest.update(b"\0")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.hexdigest()


def scoped_key(key: str, caller_id: str | None = None) -> str:
    """The bucket key of a client's key: scoped to the calling API key (`caller_id`, else the
    current call's; none: auth is off)."""
    if caller_id is None:
        caller = current_api_key.get()
        caller_id = caller.id if caller is not None else ""
    return hashlib.sha256(f"{caller_id}\0{key}".encode()).hexdigest()


@dataclass(frozen=True)
class _Failed:
    """A first call that raised: its error is raised again for its own caller."""

    error: Exception


Behavior = Callable[[Any, Context], Awaitable[Any]]


class IdempotencyInterceptor(WrappingInterceptor):
    """Runs each call that carries an `idempotency-key` once; install it innermost.

    Innermost, it sees the servicer's own exceptions (the error interceptor outside it maps
    them).

    Args:
        store: The started store.
    """

    def __init__(self, store: IdempotencyStore) -> None:
        super().__init__()
        self._store = store

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler, made idempotent for calls that carry a key, when `method` takes one."""
        kind, behavior = handler_kind(handler)
        if kind != "unary_unary" or not takes_idempotency_key(method):
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._idempotent(method, behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=_passing_bytes(handler.response_serializer),
        )

    def _idempotent(self, method: str, behavior: Behavior) -> Behavior:
        store = self._store

        async def idempotent(request: Any, context: Context) -> Any:
            key = idempotency_key(context.invocation_metadata())
            if key is None:
                return await behavior(request, context)
            result = await store.run(
                scoped_key(key),
                fingerprint(method, request),
                lambda: _attempt(behavior, request, context),
            )
            if isinstance(result, Outcome):
                return await _replay(result, context)
            if isinstance(result, _Failed):
                raise result.error
            return result

        return idempotent


async def _attempt(
    behavior: Behavior, request: Any, context: Context
) -> tuple[Any, Outcome | None]:
    """Runs the call: its response (or error), and the outcome to keep for retries."""
    try:
        response = await behavior(request, context)
    except Exception as err:
        if not isinstance(err, NexusError) and context.cancelled():
            # Its caller left: nobody else reports it (the error interceptor would).
            log.error("unexpected error in an idempotent call", exc_info=err)
        return _Failed(err), _error_outcome(err)
    return response, Outcome(0, response.SerializeToString())


def _error_outcome(err: Exception) -> Outcome | None:
    """The status to keep for a failed call; None for errors that a retry may not meet again."""
    if isinstance(err, NexusError):
        if err.code in _RETRYABLE:
            return None
        status = to_status(err)
    elif isinstance(err, grpc.aio.AbortError):
        return None  # aborted by hand: its status is on the call, not here
    else:
        status = internal_status()
    details = dict(status.trailing_metadata).get(_STATUS_DETAILS, b"")
    return Outcome(status.code.value[0], details)


async def _replay(outcome: Outcome, context: Context) -> bytes:
    """Sends back what the first call sent: the response's bytes, or its error status."""
    if not outcome.kept:
        raise not_kept()
    if outcome.code == 0:
        return outcome.body
    status = rpc_status.to_status(status_pb2.Status.FromString(outcome.body))
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned")  # pragma: no cover (abort always raises)


def _passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    """The response serializer, passing a replayed response's bytes through as they are."""

    def serializer(response: Any) -> bytes:
        if type(response) is bytes:
            return response
        return serialize(response) if serialize is not None else response

    return serializer
