"""An operation's record: what the KV bucket holds per operation, and the form of its name."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from nexus.common.errors import InvalidArgument
from nexus.common.names import NAME_PATTERN

COLLECTION = "operations"
"""The middle segment of every operation's name: `<service>/operations/<id>`."""
_ID_PATTERN = "[0-9a-f]{32}"
_NAME = re.compile(f"(?P<service>{NAME_PATTERN})/{COLLECTION}/(?P<id>{_ID_PATTERN})")


class State(Enum):
    """Where an operation is in its life."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def done(self) -> bool:
        """Whether the operation finished."""
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


@dataclass(frozen=True)
class Failure:
    """Why an operation failed or was cancelled.

    Attributes:
        code: An `ErrorCode` name, or "INTERNAL" / "CANCELLED".
        message: Text for the client; never an unexpected exception's details.
    """

    code: str
    message: str


@dataclass(frozen=True)
class Result:
    """What a succeeded operation made: a protobuf message, kept as its type and bytes."""

    type_url: str
    value: bytes


@dataclass(frozen=True)
class OperationRecord:
    """One operation as stored (JSON in KV, key `<service>.<id>`).

    Attributes:
        service: The service that owns and runs it.
        id: 32 hex digits (`nexus.common.idempotency.new_id`: derived from the idempotent call
            that started it, so that the call run again finds it).
        kind: What it runs ("train_detector").
        state: Where it is.
        created, started, updated, ended: Unix times; `updated` is the heartbeat while running.
        attempt: The attempt running (or that ran last), 0 before the first.
        max_attempts: Attempts it gets.
        stage, percent, metrics, eta_s, message: Its progress (eta_s < 0: not known).
        cancel_requested: A cancel was asked for and not carried out yet.
        runner: The attempt that holds it (a random token); only that attempt writes.
        result: The result, once SUCCEEDED.
        error: Why, once FAILED or CANCELLED; while QUEUED again, why the last attempt failed.
    """

    service: str
    id: str
    kind: str
    state: State
    created: float
    max_attempts: int
    started: float = 0.0
    updated: float = 0.0
    ended: float = 0.0
    attempt: int = 0
    stage: str = ""
    percent: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    eta_s: float = -1.0
    message: str = ""
    cancel_requested: bool = False
    runner: str = ""
    result: Result | None = None
    error: Failure | None = None

    @property
    def name(self) -> str:
        """`<service>/operations/<id>`."""
        return operation_name(self.service, self.id)

    @property
    def key(self) -> str:
        """Its KV key."""
        return kv_key(self.service, self.id)

    @property
    def done(self) -> bool:
        """Whether it finished."""
        return self.state.done

    @property
    def order(self) -> str:
        """Its place in a list: by creation time, then id (a page token's cursor)."""
        return f"{round(self.created * 1000):014d}.{self.id}"

    def finished(self, state: State, now: float, **changes: Any) -> OperationRecord:
        """This record ended in `state` at `now`."""
        return replace(
            self, state=state, ended=now, updated=now, cancel_requested=False, eta_s=-1.0, **changes
        )

    def encode(self) -> bytes:
        """The JSON stored in KV."""
        record = asdict(self)
        record["state"] = self.state.value
        if self.result is not None:
            record["result"] = {"type_url": self.result.type_url, "value": self.result.value.hex()}
        return json.dumps(record, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> OperationRecord:
        """The record stored in KV.

        Raises:
            ValueError, KeyError, TypeError: On a malformed record.
        """
        record: dict[str, Any] = json.loads(raw)
        record["state"] = State(record["state"])
        if (result := record.get("result")) is not None:
            record["result"] = Result(result["type_url"], bytes.fromhex(result["value"]))
        if (error := record.get("error")) is not None:
            record["error"] = Failure(**error)
        return cls(**record)


def operation_name(service: str, operation_id: str) -> str:
    """`<service>/operations/<id>`."""
    return f"{service}/{COLLECTION}/{operation_id}"


def kv_key(service: str, operation_id: str) -> str:
    """The KV key of an operation."""
    return f"{service}.{operation_id}"


def parse_name(name: str, field_name: str = "name") -> tuple[str, str]:
    """The service and id of an operation's name.

    Raises:
        InvalidArgument: When `name` is not `<service>/operations/<32 hex digits>`.
    """
    found = _NAME.fullmatch(name)
    if found is None:
        raise InvalidArgument.for_field(
            field_name, f"must be <service>/{COLLECTION}/<32 hex digits>, got {name!r}"
        )
    return found["service"], found["id"]
