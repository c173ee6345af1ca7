"""Domain exceptions: plain Python, no gRPC.

Domain code raises these; `nexus.common.errors.interceptor` maps them to gRPC status codes in one
place, and the gateway maps those to HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ErrorCode(Enum):
    """The error kinds the platform distinguishes; names match `grpc.StatusCode`."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    ABORTED = "ABORTED"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: `field` is a path such as `points[3].values`."""

    field: str
    description: str


@dataclass
class NexusError(Exception):
    """Base of every error the platform reports to a client.

    Attributes:
        message: Human-readable text sent to the client; never holds secrets.
        reason: A short UPPER_SNAKE machine-readable reason (for `google.rpc.ErrorInfo`).
        violations: Bad fields, for INVALID_ARGUMENT.
    """

    message: str
    reason: str = ""
    violations: list[FieldViolation] = field(default_factory=list)
    code: ErrorCode = field(default=ErrorCode.INVALID_ARGUMENT, init=False)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


@dataclass
class InvalidArgument(NexusError):
    """The request is malformed: a bad field, a NaN, a wrong width, an empty batch."""

    code: ErrorCode = field(default=ErrorCode.INVALID_ARGUMENT, init=False)

    @classmethod
    def for_field(cls, field_path: str, description: str) -> InvalidArgument:
        """One violation whose description is also the message."""
        return cls(
            f"{field_path}: {description}", violations=[FieldViolation(field_path, description)]
        )


@dataclass
class NotFound(NexusError):
    """A named thing (model, version, dataset, key) does not exist."""

    code: ErrorCode = field(default=ErrorCode.NOT_FOUND, init=False)


@dataclass
class AlreadyExists(NexusError):
    """Creating something whose name is taken."""

    code: ErrorCode = field(default=ErrorCode.ALREADY_EXISTS, init=False)


@dataclass
class FailedPrecondition(NexusError):
    """The system is not in a state that allows the request (deleting a served version)."""

    code: ErrorCode = field(default=ErrorCode.FAILED_PRECONDITION, init=False)


@dataclass
class ResourceExhausted(NexusError):
    """A size or rate limit was exceeded. Use reason REQUEST_TOO_LARGE for size limits."""

    code: ErrorCode = field(default=ErrorCode.RESOURCE_EXHAUSTED, init=False)

    @classmethod
    def too_large(cls, what: str, size: int, limit: int) -> ResourceExhausted:
        """A size limit: `what` has `size` items or bytes where at most `limit` are allowed."""
        return cls(f"{what} has {size}, more than the limit of {limit}", reason=REQUEST_TOO_LARGE)


@dataclass
class Unauthenticated(NexusError):
    """No credentials, or credentials that are not valid."""

    code: ErrorCode = field(default=ErrorCode.UNAUTHENTICATED, init=False)


@dataclass
class PermissionDenied(NexusError):
    """Valid credentials without the scope the call needs."""

    code: ErrorCode = field(default=ErrorCode.PERMISSION_DENIED, init=False)


@dataclass
class Unavailable(NexusError):
    """A dependency (NATS, a backend) cannot be reached right now; the client may retry."""

    code: ErrorCode = field(default=ErrorCode.UNAVAILABLE, init=False)


@dataclass
class DeadlineExceeded(NexusError):
    """The work did not finish within the caller's deadline."""

    code: ErrorCode = field(default=ErrorCode.DEADLINE_EXCEEDED, init=False)


@dataclass
class Aborted(NexusError):
    """A concurrent change won (a compare-and-set lost); the client may retry."""

    code: ErrorCode = field(default=ErrorCode.ABORTED, init=False)


REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
