"""Errors: domain exceptions (plain Python) and their one mapping to gRPC status codes.

Domain code imports the exceptions from here and knows nothing of gRPC; the server interceptor in
`nexus.common.errors.interceptor` turns them into statuses with `google.rpc` details.
"""

from nexus.common.errors._exceptions import (
    REQUEST_TOO_LARGE,
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    ErrorCode,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NexusError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "REQUEST_TOO_LARGE",
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "ErrorCode",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "NexusError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]
