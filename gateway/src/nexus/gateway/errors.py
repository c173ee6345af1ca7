"""The gateway's one error body, and the one mapping from gRPC status codes to HTTP.

Every error the gateway answers (its own: unknown route, bad JSON, too large, rate limited; and a
backend's: a gRPC status with `google.rpc` details) becomes the JSON of
`nexus.common.v1.ErrorResponse`:

    {"error": {"code": 404, "status": "NOT_FOUND", "message": "...", "reason": "",
               "field_violations": [{"field": "...", "description": "..."}]}}
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import Response

from nexus.api.common.v1 import common_pb2
from nexus.common.errors import REQUEST_TOO_LARGE, FieldViolation, NexusError

log = logging.getLogger(__name__)

_DETAILS_KEY = "grpc-status-details-bin"
URI_TOO_LONG = "URI_TOO_LONG"
INTERNAL_MESSAGE = "internal error; the server logged the details"

_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    # nginx's "client closed request": the caller went away before the answer.
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# Statuses whose message may carry internals (a traceback's text, an address): never forwarded.
_OPAQUE = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}


def http_status(code: grpc.StatusCode, reason: str = "") -> int:
    """The HTTP status of a gRPC status code (and `google.rpc.ErrorInfo` reason)."""
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and reason == REQUEST_TOO_LARGE:
        return 413
    return _HTTP_STATUS.get(code, 500)


class GatewayError(Exception):
    """An error answered to an HTTP client with the one error body.

    Args:
        code: The gRPC status code it corresponds to.
        message: Text for the client; never holds internals.
        reason: A machine-readable reason ("REQUEST_TOO_LARGE"), if any.
        violations: Bad request fields.
        headers: Extra response headers (`Retry-After`, `Allow`, `WWW-Authenticate`).
        status: The HTTP status, when it is not the one `code` maps to (405).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        violations: Iterable[FieldViolation] = (),
        headers: Mapping[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.violations = list(violations)
        self.headers = dict(headers or {})
        self.status = status or http_status(code, reason)

    @classmethod
    def bad_field(cls, field: str, description: str) -> GatewayError:
        """INVALID_ARGUMENT for one bad field, named in the message too."""
        message = f"{field}: {description}" if field else description
        return cls(
            grpc.StatusCode.INVALID_ARGUMENT,
            message,
            violations=[FieldViolation(field, description)],
        )

    def body(self) -> dict[str, Any]:
        """The error body as a JSON-ready dict."""
        detail = common_pb2.ErrorDetail(
            code=self.status,
            status=self.code.name,
            message=self.message,
            reason=self.reason,
            field_violations=[
                common_pb2.FieldViolation(field=v.field, description=v.description)
                for v in self.violations
            ],
        )
        return json_format.MessageToDict(
            common_pb2.ErrorResponse(error=detail),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )

    def to_json(self) -> str:
        """The error body as one line of JSON (also an SSE `data:` line)."""
        return json.dumps(self.body(), separators=(",", ":"))

    def response(self) -> Response:
        """The HTTP response: status, headers and the error body."""
        return Response(
            self.to_json(),
            status_code=self.status,
            headers=self.headers,
            media_type="application/json",
        )


def from_nexus_error(err: NexusError) -> GatewayError:
    """The gateway error for a domain error (such as the key store's Unauthenticated)."""
    code = grpc.StatusCode[err.code.name]
    headers = {"WWW-Authenticate": "Bearer"} if code is grpc.StatusCode.UNAUTHENTICATED else {}
    return GatewayError(
        code, err.message, reason=err.reason, violations=err.violations, headers=headers
    )


def from_rpc_error(err: grpc.aio.AioRpcError, backend: str) -> GatewayError:
    """The gateway error for a failed backend call, with its `google.rpc` details.

    A status without details that the channel made itself (backend down, deadline passed) or
    that may hold internals gets a message of the gateway's own.
    """
    code = err.code()
    status = _rich_status(err.trailing_metadata())
    message = status.message if status is not None else (err.details() or "")
    if status is None:
        message = _own_message(code, backend) or message
    if code in _OPAQUE:
        log.error("backend %s failed with %s: %s", backend, code.name, err.details())
        message = INTERNAL_MESSAGE
    reason, violations, retry_s = _details(status)
    headers = {"Retry-After": str(retry_after_seconds(retry_s))} if retry_s is not None else {}
    return GatewayError(code, message, reason=reason, violations=violations, headers=headers)


def _own_message(code: grpc.StatusCode, backend: str) -> str:
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"backend {backend!r} is unavailable"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"backend {backend!r} did not answer within the deadline"
    return ""


def _rich_status(metadata: Any) -> status_pb2.Status | None:
    """The `google.rpc.Status` from the trailing metadata, if the backend sent one."""
    for key, value in metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a garbled trailer must not turn a clean error into a 500
                log.warning("unparsable %s trailer", _DETAILS_KEY)
    return None


def _details(status: status_pb2.Status | None) -> tuple[str, list[FieldViolation], float | None]:
    """The reason, field violations and retry delay carried by a rich status."""
    reason, violations, retry_s = "", [], None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_s = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, violations, retry_s


def retry_after_seconds(seconds: float) -> int:
    """A `Retry-After` value: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds))


def uri_too_long(limit: int) -> GatewayError:
    """414 for a URL (or a whole request line) longer than `limit` bytes."""
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the URL is longer than the limit of {limit} bytes",
        reason=URI_TOO_LONG,
        status=414,
    )


def not_found(message: str, reason: str = "") -> GatewayError:
    """404 in the one body."""
    return GatewayError(grpc.StatusCode.NOT_FOUND, message, reason=reason)


def internal() -> GatewayError:
    """500 for an unexpected failure of the gateway itself (details go to the log only)."""
    return GatewayError(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
