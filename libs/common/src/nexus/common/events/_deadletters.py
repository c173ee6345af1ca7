"""Dead letters: what a durable consumer gave up on, kept in one stream to inspect and replay.

A dead letter is the original message (payload and headers, on `nexus.deadletters.<consumer>`)
plus `Nexus-Dead-Letter-*` headers that say where it came from and why it died. Replaying one
publishes it again on its original subject, with its event id and a `Nexus-Replayed-From`
header, and removes the dead letter once JetStream stored the replay.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from nexus.common.errors import FailedPrecondition, InvalidArgument, NotFound
from nexus.common.events._envelope import MSG_ID_HEADER, format_time
from nexus.common.events._publish import publish_retrying
from nexus.common.events._streams import DEAD_LETTERS

SUBJECT_PREFIX = "nexus.deadletters"
HEADER_PREFIX = "Nexus-Dead-Letter-"
SUBJECT_HEADER = HEADER_PREFIX + "Subject"
"""The subject the message was published on, where a replay publishes it again."""
STREAM_HEADER = HEADER_PREFIX + "Stream"
SEQUENCE_HEADER = HEADER_PREFIX + "Sequence"
CONSUMER_HEADER = HEADER_PREFIX + "Consumer"
DELIVERIES_HEADER = HEADER_PREFIX + "Deliveries"
REASON_HEADER = HEADER_PREFIX + "Reason"
ERROR_HEADER = HEADER_PREFIX + "Error"
TIME_HEADER = HEADER_PREFIX + "Time"
MSG_ID_KEPT_HEADER = HEADER_PREFIX + "Msg-Id"
"""The message's own `Nats-Msg-Id` (the dead letter has its own, for de-duplication)."""
REPLAYED_FROM_HEADER = "Nexus-Replayed-From"
"""On a replayed event: `DEAD_LETTERS:<sequence>`, the dead letter it came from."""
MAX_ERROR_CHARS = 1024
_NAME = re.compile(r"^[^.*>\s]+$")


class DeadLetterReason(StrEnum):
    """Why a consumer gave up on a message."""

    FAILED = "failed"
    """The handler failed `max_deliver` times (or no attempt finished)."""
    REJECTED = "rejected"
    """The handler raised InvalidArgument: the event itself is wrong, retrying cannot help."""
    POISON = "poison"
    """Not a valid event of the consumer's type: it never reached a handler."""


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter.

    Attributes:
        seq: Its sequence in the dead-letter stream: what `show` and `replay` take.
        subject: The subject the message was published on.
        stream: The stream that held it.
        stream_seq: Its sequence there.
        consumer: The durable consumer that gave up on it.
        deliveries: Deliveries to that consumer before it gave up.
        reason: Why (a `DeadLetterReason` value).
        error: The last error, on one line.
        time: When it died.
        data: The original payload.
        headers: The original headers (`ce-*`, `traceparent`...), without `Nats-*` ones.
        msg_id: The original `Nats-Msg-Id`.
    """

    seq: int
    subject: str
    stream: str
    stream_seq: int
    consumer: str
    deliveries: int
    reason: str
    error: str
    time: datetime | None
    data: bytes
    headers: Mapping[str, str]
    msg_id: str = ""

    @property
    def event_id(self) -> str:
        """The CloudEvents id, when the message had one."""
        return self.headers.get("ce-id", "")

    @property
    def event_type(self) -> str:
        """The CloudEvents type (the protobuf full name), when the message had one."""
        return self.headers.get("ce-type", "")

    @classmethod
    def from_stored(cls, raw: api.RawStreamMsg) -> DeadLetter:
        """Reads a message of the dead-letter stream."""
        headers = dict(raw.headers or {})
        meta = {k: headers.pop(k) for k in list(headers) if k.startswith(HEADER_PREFIX)}
        headers.pop(MSG_ID_HEADER, None)
        return cls(
            seq=raw.seq or 0,
            subject=meta.get(SUBJECT_HEADER, ""),
            stream=meta.get(STREAM_HEADER, ""),
            stream_seq=_int(meta.get(SEQUENCE_HEADER)),
            consumer=meta.get(CONSUMER_HEADER, ""),
            deliveries=_int(meta.get(DELIVERIES_HEADER)),
            reason=meta.get(REASON_HEADER, ""),
            error=meta.get(ERROR_HEADER, ""),
            time=_time(meta.get(TIME_HEADER)),
            data=raw.data or b"",
            headers=headers,
            msg_id=meta.get(MSG_ID_KEPT_HEADER, ""),
        )


def dead_letter_subject(consumer: str) -> str:
    """Where the dead letters of `consumer` go."""
    return f"{SUBJECT_PREFIX}.{consumer}"


async def store_dead_letter(
    js: JetStreamContext,
    msg: Msg,
    *,
    stream: str,
    consumer: str,
    reason: DeadLetterReason,
    error: str,
) -> None:
    """Publishes `msg` as a dead letter and waits until JetStream stored it.

    Raises:
        Unavailable: JetStream did not store it (the caller keeps the message to try again).
    """
    meta = msg.metadata
    original = dict(msg.headers or {})
    headers = {k: v for k, v in original.items() if not k.lower().startswith("nats-")}
    headers.update(
        {
            SUBJECT_HEADER: msg.subject,
            STREAM_HEADER: stream,
            SEQUENCE_HEADER: str(meta.sequence.stream),
            CONSUMER_HEADER: consumer,
            DELIVERIES_HEADER: str(meta.num_delivered),
            REASON_HEADER: reason.value,
            ERROR_HEADER: _one_line(error),
            TIME_HEADER: format_time(datetime.now(UTC)),
            # A dead letter stored twice (stopped before the message was terminated) is kept once.
            MSG_ID_HEADER: f"deadletter.{stream}.{meta.sequence.stream}.{consumer}",
        }
    )
    if original.get(MSG_ID_HEADER):
        headers[MSG_ID_KEPT_HEADER] = original[MSG_ID_HEADER]
    subject = dead_letter_subject(consumer)
    await publish_retrying(js, subject, msg.data, headers, timeout_s=2.0, retries=2)


class DeadLetters:
    """The dead-letter stream: list, inspect and replay what consumers gave up on.

    Args:
        js: A JetStream context.
    """

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def list(
        self, *, consumer: str = "", after: int = 0, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters after sequence `after`, oldest first: of one consumer, or all.

        Raises:
            InvalidArgument: `consumer` is not a consumer name, or `limit` < 1.
        """
        if consumer and not _NAME.match(consumer):
            raise InvalidArgument.for_field("consumer", f"is not a consumer name: {consumer!r}")
        if limit < 1:
            raise InvalidArgument.for_field("limit", f"must be >= 1, got {limit}")
        subject = dead_letter_subject(consumer or ">")
        letters: list[DeadLetter] = []
        seq = max(after, 0) + 1
        while len(letters) < limit:
            try:
                raw = await self._js.get_msg(DEAD_LETTERS.name, seq, subject=subject, next=True)
            except NotFoundError:  # no more (or no dead letter yet: no stream)
                break
            letters.append(DeadLetter.from_stored(raw))
            seq = (raw.seq or seq) + 1
        return letters

    async def get(self, seq: int) -> DeadLetter:
        """The dead letter of sequence `seq`.

        Raises:
            NotFound: There is none (never was, replayed, or expired).
        """
        if seq < 1:
            raise InvalidArgument.for_field("seq", f"must be >= 1, got {seq}")
        try:
            return DeadLetter.from_stored(await self._js.get_msg(DEAD_LETTERS.name, seq))
        except NotFoundError as err:
            raise NotFound(f"no dead letter {seq}") from err

    async def replay(self, seq: int) -> api.PubAck:
        """Publishes dead letter `seq` again on its original subject, then removes it.

        The event keeps its id, so consumers that did process it can tell (handlers are
        idempotent by event id); its `Nats-Msg-Id` is new, so JetStream does not take it for
        the original, and `Nexus-Replayed-From` says where it came from. The dead letter is
        removed only after JetStream stored the replay.

        Returns:
            JetStream's acknowledgement of the replay (stream and sequence).

        Raises:
            NotFound: No dead letter `seq`.
            FailedPrecondition: It does not say where it came from.
            Unavailable: The replay could not be published (the dead letter stays).
        """
        letter = await self.get(seq)
        if not letter.subject:
            raise FailedPrecondition(f"dead letter {seq} does not say where it came from")
        origin = letter.msg_id or letter.event_id
        headers = {
            **letter.headers,
            MSG_ID_HEADER: f"{origin}.replay.{seq}" if origin else f"replay.{seq}",
            REPLAYED_FROM_HEADER: f"{DEAD_LETTERS.name}:{seq}",
        }
        ack = await publish_retrying(self._js, letter.subject, letter.data, headers)
        await self._js.delete_msg(DEAD_LETTERS.name, seq)
        return ack


def _one_line(text: str) -> str:
    """`text` fit for a header: one line, at most MAX_ERROR_CHARS."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
