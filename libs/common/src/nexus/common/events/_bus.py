"""EventBus: publish CloudEvents to JetStream, consume them durably or watch them live."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import cast

from google.protobuf.message import Message
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError, TooManyStalledMsgsError
from opentelemetry import propagate, trace

from nexus.common.errors import FailedPrecondition, Unavailable
from nexus.common.events import _publish
from nexus.common.events._consumer import BatchHandler, Consumer, Handler
from nexus.common.events._envelope import M, build_headers, new_event_id
from nexus.common.events._follower import WatchConsumer
from nexus.common.events._publish import RETRYABLE, publish_retrying
from nexus.common.events._streams import Stream, ensure_stream
from nexus.common.events._work import BatchWorkConsumer, WorkConsumer

log = logging.getLogger(__name__)

MAX_UNACKNOWLEDGED = 4000
"""Writes a bus holds unacknowledged (`publish_many`); one more waits for room (nats-py's
default, said here because `_publish_async` reads it)."""
_tracer = trace.get_tracer("nexus.events")


class EventBus:
    """Publishes and consumes the platform's events on NATS JetStream.

    Events are CloudEvents 1.0 in binary mode: `ce-*` headers around a protobuf payload, with
    `Nats-Msg-Id` set to the event id so that JetStream stores a re-published event once, and W3C
    `traceparent` so that one trace crosses NATS.

    Args:
        nc: A connected client (`nexus.common.nats.connect`), reconnecting by itself.
        source: The CloudEvents source of what this bus publishes, such as "nexus/anomaly".
    """

    def __init__(self, nc: Client, source: str) -> None:
        self._nc = nc
        self._source = source
        self._js = nc.jetstream(publish_async_max_pending=MAX_UNACKNOWLEDGED)
        self._replies_ready = False  # nats-py subscribes its reply inbox on the first write

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context, for KV buckets and object stores."""
        return self._js

    @property
    def nc(self) -> Client:
        """The NATS connection."""
        return self._nc

    @property
    def source(self) -> str:
        """The CloudEvents source of published events."""
        return self._source

    async def ensure_streams(self, *streams: Stream) -> None:
        """Creates the streams a service declares, or updates their configuration to this
        version's. Each service ensures the streams it owns (and those it reads) at start."""
        for stream in streams:
            await ensure_stream(self._js, stream)

    async def publish(
        self,
        subject: str,
        message: Message,
        *,
        event_id: str | None = None,
        subject_hint: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 6,
    ) -> str:
        """Publishes `message` as a CloudEvent and waits until JetStream stored it.

        Args:
            subject: NATS subject, `nexus.<area>.<event>`.
            message: The payload; its protobuf full name becomes `ce-type`.
            event_id: The event id; a fresh uuid4 unless given (give the same id to publish the
                same event again: JetStream stores it once within its duplicate window).
            subject_hint: The CloudEvents `ce-subject`: what the event is about.
            timeout_s: How long one attempt waits for JetStream's acknowledgement.
            retries: Attempts after the first one, with backoff, on timeouts and no responders.

        Returns:
            The event id.

        Raises:
            Unavailable: When every attempt failed.
        """
        event_id = event_id or new_event_id()
        headers = build_headers(
            message, event_id=event_id, source=self._source, subject_hint=subject_hint
        )
        attributes = {"messaging.system": "nats", "messaging.message.id": event_id}
        with _tracer.start_as_current_span(
            f"publish {subject}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        ):
            propagate.inject(headers)
            payload = message.SerializeToString()
            await publish_retrying(
                self._js, subject, payload, headers, timeout_s=timeout_s, retries=retries
            )
        return event_id

    async def publish_many(
        self,
        subject: str,
        events: Sequence[tuple[Message, str]],
        *,
        timeout_s: float = 5.0,
        retries: int = 6,
    ) -> list[Exception | None]:
        """Publishes `(message, event_id)` pairs as `publish` would, all written before any
        acknowledgement is awaited (one span for them all); each one's outcome: None once
        JetStream stored it, else the error that `publish` would have raised (`Unavailable`
        after the retries).

        `publish` awaits each acknowledgement with a timer and a span of its own, which was
        the largest cost of a batch of detections on the anomaly stream
        (docs/adr/0047-anomaly-stream-throughput.md). What was not acknowledged within
        `timeout_s` (a lost write, a restarting server) is written again, all of it together,
        after `publish`'s backoff, up to `retries` times: the event id makes JetStream store it
        once. So the whole call waits at most `(retries + 1) * 2 * timeout_s` plus the backoffs
        however many events there are (a round may also wait `timeout_s` for room to write:
        `_write`; docs/adr/0049-anomaly-stream-io.md).
        """
        attributes: dict[str, str | int] = {
            "messaging.system": "nats",
            "messaging.batch.message_count": len(events),
        }
        with _tracer.start_as_current_span(
            f"publish {subject}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        ):
            return await self._publish_rounds(subject, events, timeout_s, retries)

    async def _publish_rounds(
        self, subject: str, events: Sequence[tuple[Message, str]], timeout_s: float, retries: int
    ) -> list[Exception | None]:
        """Writes the events, then again those whose acknowledgement did not come or came as
        an error worth retrying (`RETRYABLE`), with backoff; each one's outcome."""
        outcomes: list[Exception | None] = [None] * len(events)
        missing = list(range(len(events)))
        for attempt in range(retries + 1):
            if attempt:
                log.info(
                    "publish to %s: %d of %d events not acknowledged; writing them again"
                    " (attempt %d)", subject, len(missing), len(events), attempt + 1,
                )  # fmt: skip
                await asyncio.sleep(_publish.publish_backoff_s(attempt))
            sent = await self._write(subject, [events[i] for i in missing], timeout_s)
            failed = await _acknowledgements(sent, timeout_s)
            for index, error in zip(missing, failed, strict=True):
                outcomes[index] = error
            missing = [i for i in missing if isinstance(outcomes[i], RETRYABLE)]
            if not missing:
                return outcomes
        for index in missing:
            last = outcomes[index]
            why = f"could not publish to {subject} after {retries + 1} attempts: {last!r}"
            outcomes[index] = Unavailable(why)
        return outcomes

    async def _write(
        self, subject: str, events: Sequence[tuple[Message, str]], stall_s: float
    ) -> list[asyncio.Future[api.PubAck] | None]:
        """Writes events without awaiting their acknowledgements: each one's future, None for
        one not written. nats-py holds at most 4,000 writes unacknowledged and, without a
        limit, waits for room forever: with the server gone, a batch larger than that would
        never finish. So once a write found no room for `stall_s`, the rest are not written
        (None: the next round writes them, after these were given up on)."""
        sent: list[asyncio.Future[api.PubAck] | None] = []
        for message, event_id in events:
            try:
                sent.append(await self._publish_async(subject, message, event_id, stall_s))
            except TooManyStalledMsgsError:
                log.debug("publish to %s: no room for unacknowledged writes", subject)
                break
        return sent + [None] * (len(events) - len(sent))

    async def _publish_async(
        self, subject: str, message: Message, event_id: str, stall_s: float
    ) -> asyncio.Future[api.PubAck] | None:
        """Writes one event without awaiting its acknowledgement; None when it could not even
        be written (it is written again in the next round).

        Raises:
            TooManyStalledMsgsError: No room for another unacknowledged write for `stall_s`.
        """
        headers = build_headers(message, event_id=event_id, source=self._source, subject_hint=None)
        propagate.inject(headers)
        # nats-py waits for room with `asyncio.wait_for`, which with a timeout runs the wait as
        # a task of its own: a turn of the event loop per write, and the flusher's socket write
        # with it. Where there is room the wait returns at once, so it is given no timeout; but
        # not on the first write, whose inbox subscription lets other writes take the room.
        room = self._replies_ready and self._js.publish_async_pending() < MAX_UNACKNOWLEDGED
        try:
            sent = await self._js.publish_async(
                subject,
                message.SerializeToString(),
                wait_stall=None if room else stall_s,
                headers=headers,
            )
            self._replies_ready = True
            return sent
        except TooManyStalledMsgsError:
            raise
        except (NatsError, *RETRYABLE) as err:
            log.debug("async publish to %s failed (%r); writing it again", subject, err)
            return None

    async def consume(
        self,
        subject: str,
        message_type: type[M],
        handler: Handler[M],
        *,
        durable: str,
        stream: str,
        batch: int = 64,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
        concurrency: int = 1,
        prefetch: bool = True,
        start_time: datetime | None = None,
    ) -> Consumer:
        """Starts a durable pull consumer; replicas using the same `durable` share its events.

        Each event is acknowledged after `handler` returned. When the handler raises, the event
        is redelivered after a short delay, up to `max_deliver` deliveries in all; then it goes
        to the dead-letter stream (`DEAD_LETTERS`) with why it died, as does a message that is
        not a valid event (poison) and an event the handler rejected by raising
        `InvalidArgument` (retrying cannot help). Nothing is dropped: an event leaves the
        consumer's stream only once it was handled or its dead letter was stored. A new durable
        starts at the oldest event its stream still holds.

        Idempotency: the consumer remembers the ids of the events it processed (a bounded LRU)
        and acknowledges a redelivered one without calling the handler. Across processes, the
        publisher's `Nats-Msg-Id` de-duplication stores an event once; handlers should still be
        idempotent by event id, since a process may stop between its work and its ack.

        Args:
            subject: Subject filter (`nexus.metrics.>`).
            message_type: The protobuf class of the payloads.
            handler: Awaited on the event loop for each event; offload CPU-heavy work yourself.
            durable: The consumer's durable name, shared by the replicas.
            stream: The name of the stream holding `subject`.
            batch: Messages fetched per request.
            max_deliver: Deliveries of one event before it becomes a dead letter.
            ack_wait_s: Seconds before an unacknowledged event is redelivered.
            concurrency: Events of a batch handled at once (1: one after the other). They start
                in delivery order; each is acknowledged after its own handler returned.
            prefetch: Ask for the next batch while this one is handled (throughput). Off for
                long work: a message fetched behind a long one would wait for it while another
                replica sits idle.
            start_time: A new durable starts at the first event stored at or after this time
                rather than the oldest (give every replica the same one: it is part of the
                consumer's configuration).

        Raises:
            FailedPrecondition: When the stream does not exist.
        """
        consumer = WorkConsumer(
            self._nc,
            stream,
            _work_config(subject, durable, batch, ack_wait_s, start_time),
            batch,
            message_type,
            handler,
            concurrency=concurrency,
            max_deliver=max_deliver,
            prefetch=prefetch,
        )
        return await _started(consumer, stream)

    async def consume_batches(
        self,
        subject: str,
        message_type: type[M],
        handler: BatchHandler[M],
        *,
        durable: str,
        stream: str,
        batch: int = 256,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
        depth: int = 1,
    ) -> Consumer:
        """Starts a durable pull consumer like `consume`, whose handler takes a fetched batch's
        events at once (in delivery order) and returns each one's outcome; `depth` batches at
        once (each started in delivery order: the handler keeps what must stay in order).

        Everything `consume` promises holds per event: each is acknowledged after the handler
        returned None for it, delivered again after a delay when it returned an error, and
        dead-lettered when that error is `InvalidArgument` or after `max_deliver` deliveries;
        poison messages and events this consumer already processed never reach the handler.
        When the handler raises, every event of the batch is delivered again.

        Raises:
            FailedPrecondition: When the stream does not exist.
        """
        consumer = BatchWorkConsumer(
            self._nc,
            stream,
            _work_config(subject, durable, batch, ack_wait_s),
            batch,
            message_type,
            handler,
            max_deliver=max_deliver,
            depth=depth,
        )
        return await _started(consumer, stream)

    async def stream_of(self, subject: str) -> str:
        """The name of the stream that holds `subject` (a subject or a filter), as the server
        says.

        Raises:
            FailedPrecondition: When none does.
            Unavailable: When NATS does not answer.
        """
        try:
            return await self._js.find_stream_name_by_subject(subject)
        except NotFoundError as err:
            raise FailedPrecondition(f"no stream holds subject {subject}") from err
        except (NatsError, TimeoutError) as err:
            raise Unavailable(f"cannot look up the stream of {subject}: {err!r}") from err

    async def watch(
        self, subject: str, message_type: type[M], handler: Handler[M], *, stream: str = ""
    ) -> Consumer:
        """Starts a live feed of events published from now on; every watcher gets every event.

        For notifications and Watch RPCs: no acknowledgements, no redelivery; a handler that
        raises is logged and the feed goes on. After a server restart the feed resumes after the
        last event it delivered.

        Args:
            subject: Subject filter (`nexus.models.anomaly.>`).
            message_type: The protobuf class of the payloads.
            handler: Awaited on the event loop for each event.
            stream: The name of the stream holding `subject`; asked of the server when empty.

        Raises:
            FailedPrecondition: When no stream holds `subject`.
        """
        stream = stream or await self.stream_of(subject)
        watcher = WatchConsumer(self._nc, stream, subject, message_type, handler)
        return await _started(watcher, stream)


def _work_config(
    subject: str, durable: str, batch: int, ack_wait_s: float, start_time: datetime | None = None
) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=subject,
        deliver_policy=(
            api.DeliverPolicy.ALL if start_time is None else api.DeliverPolicy.BY_START_TIME
        ),
        opt_start_time=start_time,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        # The consumer counts deliveries itself: the server would stop redelivering at its
        # limit, and an event whose dead letter could not be stored yet would be stranded.
        max_deliver=-1,
        # A batch in hand and the next one on its way (see Consumer._next), with room to spare.
        max_ack_pending=max(1000, batch * 4),
    )


async def _started(consumer: Consumer, stream: str) -> Consumer:
    try:
        await consumer.start()
    except NotFoundError as err:
        raise FailedPrecondition(f"stream {stream} does not exist; ensure_streams first") from err
    except (NatsError, TimeoutError) as err:
        raise Unavailable(f"cannot create a consumer on stream {stream}: {err!r}") from err
    return consumer


async def _acknowledgements(
    sent: Sequence[asyncio.Future[api.PubAck] | None], timeout_s: float
) -> list[Exception | None]:
    """Waits up to `timeout_s` for the acknowledgements of what was written (None: not even
    written); for each, None when it came, else why not (a `TimeoutError` when it did not come
    in time or was never written; those still waited on are cancelled)."""
    pending = [future for future in sent if future is not None]
    if pending:
        try:
            await asyncio.wait(pending, timeout=timeout_s)
        except asyncio.CancelledError:  # nobody will wait for them: free their slots now
            for waiting in pending:
                waiting.cancel()
            raise
    errors: list[Exception | None] = []
    for future in sent:
        if future is None or future.cancelled() or not future.done():
            if future is not None:
                future.cancel()
            errors.append(TimeoutError("no acknowledgement in time"))
        else:
            errors.append(cast(Exception | None, future.exception()))
    return errors
