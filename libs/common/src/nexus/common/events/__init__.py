"""Events: CloudEvents 1.0 over NATS JetStream, with trace context, retries and dead letters.

Publishers call `EventBus.publish`; workers share a durable pull consumer (`EventBus.consume`, or
`EventBus.consume_batches` for a handler that takes a fetched batch at once);
notifications and Watch RPCs follow new events live (`EventBus.watch`). Each service declares
the `Stream`s of its area and ensures them at start. What a durable consumer gives up on goes
to the `DEAD_LETTERS` stream, where `DeadLetters` (and `nexus dead-letters`) lists and replays
it. See docs/adr/0004-events.md and docs/adr/0015-dead-letters.md.
"""

from nexus.common.events._bus import EventBus
from nexus.common.events._consumer import BatchHandler, Consumer, Handler
from nexus.common.events._deadletters import (
    REPLAYED_FROM_HEADER,
    DeadLetter,
    DeadLetterReason,
    DeadLetters,
    dead_letter_subject,
)
from nexus.common.events._envelope import Event, parse_event
from nexus.common.events._follower import Follower
from nexus.common.events._streams import (
    DAY_S,
    DEAD_LETTERS,
    DUPLICATE_WINDOW_S,
    GIB,
    METRICS,
    MIB,
    Stream,
)

__all__ = [
    "DAY_S",
    "DEAD_LETTERS",
    "DUPLICATE_WINDOW_S",
    "GIB",
    "METRICS",
    "MIB",
    "REPLAYED_FROM_HEADER",
    "BatchHandler",
    "Consumer",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetters",
    "Event",
    "EventBus",
    "Follower",
    "Handler",
    "Stream",
    "dead_letter_subject",
    "parse_event",
]
