"""Streams: each area's events live in one JetStream stream, declared by the area's owner."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

DUPLICATE_WINDOW_S = 120.0
"""A re-published event (same id) within this window is stored once."""

MIB = 1024 * 1024
GIB = 1024 * MIB
DAY_S = 24 * 3600.0


@dataclass(frozen=True)
class Stream:
    """A JetStream stream of events, declared by the service that owns its area.

    The oldest messages go first when a limit is reached.

    Attributes:
        name: The stream's name ("ANOMALY").
        subjects: The subjects it stores (`nexus.<area>.>`).
        max_age_s: Seconds a message is kept.
        max_bytes: Bytes the stream holds at most.
        max_msg_bytes: Largest message.
    """

    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    max_bytes: int
    max_msg_bytes: int = MIB

    def config(self) -> api.StreamConfig:
        """Its configuration: file storage, its limits, the 2-minute duplicate window."""
        return api.StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            max_msg_size=self.max_msg_bytes,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=1,
        )


METRICS = Stream("METRICS", ("nexus.metrics.>",), max_age_s=DAY_S, max_bytes=GIB)
"""The platform's streaming input (`nexus.metrics.<source>`, `MetricPoint` payloads), which
producers outside the platform write and any service may read: the one stream no service owns.
Raw input, re-sent by its producers if it matters: a day is plenty to catch up."""

DEAD_LETTERS = Stream(
    "DEAD_LETTERS",
    ("nexus.deadletters.>",),
    max_age_s=30 * DAY_S,
    max_bytes=GIB,
    max_msg_bytes=MIB + 64 * 1024,  # an event of the largest size, plus why it died
)
"""Events that a durable consumer gave up on, on `nexus.deadletters.<consumer>`: the original
subject, payload and headers, plus why (`nexus.common.events.DeadLetters` lists and replays
them). Kept a month: long enough to notice, fix the handler and replay."""


async def ensure_stream(js: JetStreamContext, stream: Stream) -> None:
    """Creates `stream`, or updates its configuration to this version's."""
    config = stream.config()
    try:
        await js.add_stream(config)
    except BadRequestError:  # exists with another configuration: bring it up to date
        await js.update_stream(config)
