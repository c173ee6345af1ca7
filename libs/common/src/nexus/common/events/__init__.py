"""Events: CloudEvents 1.0 over NATS JetStream, with trace context and retries.

Publishers call `EventBus.publish`; workers share a durable pull consumer (`EventBus.consume`);
notifications and Watch RPCs follow new events live (`EventBus.watch`). See docs/adr/0004-events.md.
"""

from nexus.common.events._bus import (
    DUPLICATE_WINDOW_S,
    STREAM_LIMITS,
    STREAMS,
    EventBus,
    StreamLimits,
    stream_config,
    stream_of,
)
from nexus.common.events._consumer import Consumer, Follower, Handler
from nexus.common.events._envelope import Event, parse_event

__all__ = [
    "DUPLICATE_WINDOW_S",
    "STREAMS",
    "STREAM_LIMITS",
    "Consumer",
    "Event",
    "EventBus",
    "Follower",
    "Handler",
    "StreamLimits",
    "parse_event",
    "stream_config",
    "stream_of",
]
