"""Publishing to JetStream with retries: one policy for events, dead letters and replays."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from nats.errors import ConnectionReconnectingError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NoStreamResponseError
from nats.js.errors import ServiceUnavailableError as JsUnavailable

from nexus.common.errors import Unavailable

log = logging.getLogger(__name__)

RETRYABLE = (
    NatsTimeoutError,  # no ack in time: the server is restarting or the connection is down
    TimeoutError,
    NoRespondersError,
    NoStreamResponseError,  # JetStream not (yet) up after a restart
    JsUnavailable,
    ConnectionReconnectingError,
    OutboundBufferLimitError,
)
"""What a publish may fail with while NATS restarts or reconnects: worth another attempt."""


async def publish_retrying(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str],
    *,
    timeout_s: float = 5.0,
    retries: int = 6,
) -> api.PubAck:
    """Publishes and waits until JetStream stored the message, retrying with backoff.

    Give the message a `Nats-Msg-Id` header: a retry after a lost acknowledgement is then
    stored once.

    Returns:
        JetStream's acknowledgement (stream and sequence).

    Raises:
        Unavailable: When every attempt failed.
    """
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(publish_backoff_s(attempt))
        try:
            return await js.publish(subject, payload, timeout=timeout_s, headers=dict(headers))
        except RETRYABLE as err:
            last = err
            log.debug("publish to %s failed (%r), attempt %d", subject, err, attempt + 1)
    raise Unavailable(
        f"could not publish to {subject} after {retries + 1} attempts: {last!r}"
    ) from last


def publish_backoff_s(attempt: int) -> float:
    """Seconds before publish attempt `attempt` + 1: 0.1 s, doubling, at most 2 s."""
    return float(min(0.1 * 2 ** (attempt - 1), 2.0))
