"""The CloudEvents 1.0 envelope in binary mode: `ce-*` NATS headers around a protobuf payload."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg

from nexus.common.errors import InvalidArgument

M = TypeVar("M", bound=Message)

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/protobuf"
MSG_ID_HEADER = "Nats-Msg-Id"
"""JetStream drops a message whose id it saw within the stream's duplicate window."""
FORMER_TYPES: Mapping[str, frozenset[str]] = {
    "nexus.metrics.v1.MetricPoint": frozenset({"nexus.anomaly.v1.MetricPoint"}),
}
"""The former `ce-type`s of messages that moved to another proto package with the same wire
format: events that producers still publish under the old name are accepted."""


@dataclass(frozen=True)
class Event(Generic[M]):
    """One event as a handler receives it.

    Attributes:
        id: The CloudEvents id (also the JetStream de-duplication id).
        type: The protobuf full name of the payload (`nexus.anomaly.v1.AnomalyDetected`).
        source: Who published it (`nexus/anomaly`).
        subject: The NATS subject it was published on (`nexus.metrics.cpu`).
        time: When it was published.
        data: The decoded payload.
        headers: Every header of the NATS message, `traceparent` included.
        delivery: Attempt number: 1 on the first delivery, 2 on the first redelivery, ...
        subject_hint: The CloudEvents subject (`ce-subject`): what the event is about, as the
            publisher's `subject_hint` said; empty when it gave none.
        sequence: Its sequence in the JetStream stream that holds it (0 for a core NATS
            message): the same on every delivery, so it tells a redelivery from a new event.
    """

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    data: M
    headers: Mapping[str, str]
    delivery: int
    subject_hint: str = ""
    sequence: int = 0


def new_event_id() -> str:
    """A fresh event id: a uuid4 in hex."""
    return uuid.uuid4().hex


def build_headers(
    message: Message, *, event_id: str, source: str, subject_hint: str | None
) -> dict[str, str]:
    """The binary-mode CloudEvents headers of `message`, with the JetStream de-duplication id."""
    headers = {
        "ce-specversion": SPEC_VERSION,
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": message.DESCRIPTOR.full_name,
        "ce-time": format_time(datetime.now(UTC)),
        "content-type": CONTENT_TYPE,
        MSG_ID_HEADER: event_id,
    }
    if subject_hint:
        headers["ce-subject"] = subject_hint
    return headers


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds: `2025-01-31T12:00:00.123Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_event(msg: Msg, message_type: type[M]) -> Event[M]:
    """Decodes a NATS message that carries a CloudEvent of `message_type`.

    Args:
        msg: The message as NATS delivered it (JetStream or core NATS).
        message_type: The protobuf class the payload must be.

    Raises:
        InvalidArgument: When a required `ce-*` header is missing, the type is another one, or
            the payload does not decode.
    """
    headers = dict(msg.headers or {})
    expected = message_type.DESCRIPTOR.full_name
    got = headers.get("ce-type") or ""
    if got != expected and got not in FORMER_TYPES.get(expected, ()):
        raise InvalidArgument.for_field(
            "ce-type", f"expected {expected}, got {got or 'no ce-type header'}"
        )
    for name in ("ce-specversion", "ce-id", "ce-source"):
        if not headers.get(name):
            raise InvalidArgument.for_field(name, "missing")
    delivery, sequence = _ack_numbers(msg)
    # Not `Event(...)`: a frozen dataclass's generated __init__ sets each field through
    # object.__setattr__, 1.2 us of a stream consumer's time per message; this sets the same
    # fields at once, on the same (still frozen) instance.
    event: Event[M] = object.__new__(Event)
    event.__dict__.update(
        id=headers["ce-id"],
        type=expected,
        source=headers["ce-source"],
        subject=msg.subject,
        time=_parse_time(headers.get("ce-time")),
        data=_decode(msg.data, message_type),
        headers=headers,
        delivery=delivery,
        subject_hint=headers.get("ce-subject", ""),
        sequence=sequence,
    )
    return event


def _decode(payload: bytes, message_type: type[M]) -> M:
    message = message_type()
    try:
        message.ParseFromString(payload)
    except DecodeError as err:
        raise InvalidArgument.for_field("data", f"not a valid {message_type.__name__}") from err
    return message


def _parse_time(text: str | None) -> datetime:
    if not text:  # ce-time is optional in CloudEvents
        return datetime.now(UTC)
    try:
        return datetime.fromisoformat(text)
    except ValueError as err:
        raise InvalidArgument.for_field("ce-time", f"not RFC 3339: {text!r}") from err


def sequence_of(msg: Msg) -> int:
    """The stream sequence of a JetStream message; 0 for a core NATS message."""
    return _ack_numbers(msg)[1]


def delivery_of(msg: Msg) -> int:
    """The delivery attempt of a message: 1 for the first; core NATS messages (not from a
    JetStream consumer) have no count and are a first delivery."""
    return _ack_numbers(msg)[0]


# $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
_V1_TOKENS = 9
_V2_MIN_TOKENS = 11  # the same after $JS.ACK.<domain>.<account hash>, maybe a token more


def _ack_numbers(msg: Msg) -> tuple[int, int]:
    """The delivery count and stream sequence that a JetStream message's reply subject holds,
    read without nats-py's `metadata` (which also converts the timestamp: a cost per message
    on a stream consumer's hot path); (1, 0) for a message that has none."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) < _V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        return 1, 0
    if len(tokens) == _V1_TOKENS:
        return int(tokens[4]), int(tokens[5])
    if len(tokens) >= _V2_MIN_TOKENS:
        return int(tokens[6]), int(tokens[7])
    return 1, 0
