"""OpenAI's error body, and the one mapping from the gateway's errors to it.

Every error of the OpenAI surface is `{"error": {"message", "type", "param", "code"}}` (the
`Error` schema of OpenAI's API), with the HTTP status the gateway would answer anyway: the gRPC
status of a backend error goes through `nexus.gateway.errors` first, so both surfaces agree on
statuses and differ only in the body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from nexus.gateway.backends import BACKEND_NOT_FOUND
from nexus.gateway.errors import GatewayError
from nexus.gateway.gateway import RATE_LIMITED

BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
MODEL_NOT_FOUND = "MODEL_NOT_FOUND"

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"

# HTTP status -> (error type, error code) when nothing more specific applies.
_BY_STATUS: dict[int, tuple[str, str | None]] = {
    400: (INVALID_REQUEST, None),
    401: (INVALID_REQUEST, "invalid_api_key"),
    403: (INVALID_REQUEST, "insufficient_permissions"),
    404: (INVALID_REQUEST, "model_not_found"),
    405: (INVALID_REQUEST, "method_not_allowed"),
    409: (INVALID_REQUEST, "conflict"),
    413: (INVALID_REQUEST, "request_too_large"),
    414: (INVALID_REQUEST, "uri_too_long"),
    415: (INVALID_REQUEST, "unsupported_media_type"),
    429: ("requests", "rate_limit_exceeded"),
    431: (INVALID_REQUEST, "headers_too_large"),
    499: (INVALID_REQUEST, "cancelled"),
    501: (INVALID_REQUEST, "unsupported"),
    503: (SERVER_ERROR, "service_unavailable"),
    504: (SERVER_ERROR, "timeout"),
}
# google.rpc.ErrorInfo reasons with an OpenAI code of their own.
_BY_REASON: dict[str, tuple[str, str]] = {
    BUDGET_EXCEEDED: ("insufficient_quota", "insufficient_quota"),
    RATE_LIMITED: ("requests", "rate_limit_exceeded"),
    "CONTEXT_WINDOW_EXCEEDED": (INVALID_REQUEST, "context_length_exceeded"),
}


class OpenAIError(Exception):
    """An error answered in OpenAI's format.

    Args:
        status: The HTTP status.
        message: Text for the client; never holds internals.
        kind: OpenAI's error type ("invalid_request_error", "server_error", ...).
        param: The request parameter at fault ("temperature", "messages[0].role"), if any.
        code: OpenAI's error code ("model_not_found", "rate_limit_exceeded", ...), if any.
        headers: Extra response headers (`Retry-After`, `WWW-Authenticate`, `Allow`).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = kind
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The error body as a JSON-ready dict."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}}

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


def invalid(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    """400 for one bad request parameter."""
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    """404 for a model that no deployment serves."""
    message = f"The model `{model}` does not exist or you do not have access to it."
    return OpenAIError(404, message, param="model", code="model_not_found")


def from_gateway_error(err: GatewayError) -> OpenAIError:
    """The OpenAI error of a gateway error (its own, or a backend's gRPC status).

    A 404 on these routes is an unknown model, unless the llm backend itself is missing; a
    budget refusal (RESOURCE_EXHAUSTED with reason BUDGET_EXCEEDED) is `insufficient_quota`,
    which the OpenAI clients do not retry.
    """
    kind, code = _BY_STATUS.get(err.status, (SERVER_ERROR, None))
    if err.reason in _BY_REASON:
        kind, code = _BY_REASON[err.reason]
    param = err.violations[0].field if err.violations else None
    headers = dict(err.headers)
    if err.status == 404:
        code = "not_found" if err.reason == BACKEND_NOT_FOUND else code
        param = None if err.reason == BACKEND_NOT_FOUND else "model"
    elif err.status == 400 and code is None and err.reason:
        code = err.reason.lower()
    if code == "insufficient_quota":
        headers["x-should-retry"] = "false"
    return OpenAIError(err.status, err.message, kind=kind, param=param, code=code, headers=headers)
