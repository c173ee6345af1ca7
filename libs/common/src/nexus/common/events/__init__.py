"""Events: CloudEvents 1.0 over NATS JetStream, with trace context and retries.

Publishers call `EventBus.publish`; workers share a durable pull consumer (`EventBus.consume`);
notifications and Watch RPCs follow new events live (`EventBus.watch`). Each service declares
the `Stream`s of its area and ensures them at start. See docs/adr/0004-events.md.
"""

from nexus.common.events._bus import (
    DAY_S,
    DUPLICATE_WINDOW_S,
    GIB,
    METRICS,
    MIB,
    EventBus,
    Stream,
)
from nexus.common.events._consumer import Consumer, Follower, Handler
from nexus.common.events._envelope import Event, parse_event

__all__ = [
    "DAY_S",
    "DUPLICATE_WINDOW_S",
    "GIB",
    "METRICS",
    "MIB",
    "Consumer",
    "Event",
    "EventBus",
    "Follower",
    "Handler",
    "Stream",
    "parse_event",
]
