"""Pull consumers: a background fetch loop per consumer that outlives NATS restarts.

A durable work consumer (`EventBus.consume`) is shared by every replica that uses its name,
acknowledges after the handler succeeded and redelivers on failure. A follower is an ephemeral,
unacknowledged consumer per process that resumes after the last message it saw when the server
lost it; `EventBus.watch` follows new events with one, the model registry its KV bucket.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Generic

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, FetchTimeoutError, NotFoundError
from opentelemetry import propagate, trace

from nexus.common.errors import InvalidArgument
from nexus.common.events._envelope import Event, M, parse_event

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("nexus.events")

FETCH_TIMEOUT_S = 2.0
"""How long one fetch waits for messages."""
_HEARTBEAT_S = 0.5
# A fetch that ends without messages AND without a server heartbeat means the consumer (or the
# connection) is gone: only then do we back off and check that the consumer still exists.
_TRANSIENT_STATUS = (400, 408, 409)
_API_TIMEOUT_S = 2.0
_MAX_BACKOFF_S = 2.0
_STOP_GRACE_S = 10.0
DEDUPE_CAPACITY = 10_000
"""Event ids a work consumer remembers as processed, to skip redelivered duplicates."""
FOLLOWER_INACTIVE_S = 60.0
"""The server removes a follower's ephemeral consumer this long after its process stopped."""

Handler = Callable[[Event[M]], Awaitable[None]]
RawHandler = Callable[[Msg], Awaitable[None]]


class Consumer:
    """A background task that pulls messages from one JetStream consumer and handles each.

    Build one with `EventBus.consume` or `EventBus.watch`, end it with `stop()`.

    Attributes:
        processed: Handler calls that succeeded.
        failed: Handler calls that raised.
        duplicates: Deliveries skipped because this consumer had already processed their event id.
        terminated: Messages given up on: unparseable (poison), or failed `max_deliver` times.
    """

    def __init__(self, nc: Client, stream: str, config: api.ConsumerConfig, batch: int) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._stream = stream
        self._config = config
        self._batch = batch
        self._sub: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._cancellable = False
        self._failures = 0
        self.processed = self.failed = self.duplicates = self.terminated = 0

    @property
    def name(self) -> str:
        """The JetStream consumer's name (the durable name for a work consumer)."""
        return self._config.name or ""

    @property
    def running(self) -> bool:
        """Whether the fetch loop is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Creates (or binds to) the JetStream consumer and starts the fetch loop."""
        await self._create()
        self._sub = await self._js.pull_subscribe_bind(consumer=self.name, stream=self._stream)
        self._task = asyncio.create_task(self._run(), name=f"nexus-consumer-{self.name}")

    async def stop(self) -> None:
        """Stops the loop after the message in hand; unhandled messages go back to the server."""
        self._stopping = True
        if self._task is not None:
            if self._cancellable:  # waiting on the server, holding no message
                self._task.cancel()
            await asyncio.wait({self._task}, timeout=_STOP_GRACE_S)
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        if self._sub is not None:
            with suppress(NatsError):
                await self._sub.unsubscribe()
        await self._after_stop()

    async def _create(self) -> None:
        await self._js.add_consumer(self._stream, config=self._config, timeout=_API_TIMEOUT_S)

    async def _after_stop(self) -> None:
        """Hook: what to clean up on the server once stopped."""

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._handle_batch(await self._fetch())
            except Exception:  # a bug must not end the consumer silently
                log.exception("consumer %s failed; going on in a second", self.name)
                await asyncio.sleep(1.0)

    async def _fetch(self) -> list[Msg]:
        assert self._sub is not None
        self._cancellable = True
        try:
            msgs = await self._sub.fetch(
                self._batch, timeout=FETCH_TIMEOUT_S, heartbeat=_HEARTBEAT_S
            )
        except FetchTimeoutError:
            msgs = None  # idle: no messages, but the server's heartbeats say all is well
            await self._idle()
        except (NatsError, TimeoutError) as err:
            await self._recover(err)
            return []
        finally:
            self._cancellable = False
        if msgs == []:  # neither messages nor heartbeats: the consumer may have vanished
            await self._recover(None)
            return []
        self._failures = 0
        return msgs or []

    async def _recover(self, err: BaseException | None) -> None:
        """Backs off, then re-creates the consumer if the server lost it (nats-py reconnects)."""
        if isinstance(err, APIError) and err.code in _TRANSIENT_STATUS:
            # Such as "heartbeat value too large" when nats-py re-sends a pull request with the
            # few milliseconds left of a fetch: nothing is wrong with the consumer, fetch again.
            await asyncio.sleep(0.05)
            return
        self._failures += 1
        if self._nc.is_closed:
            log.warning("consumer %s stops: the NATS connection is closed", self.name)
            self._stopping = True
            return
        if self._failures in (1, 10) or self._failures % 100 == 0:
            log.warning("consumer %s cannot fetch (%s); retrying", self.name, err)
        self._cancellable = True  # holding no message: stop() may cancel the wait
        try:
            await asyncio.sleep(min(0.1 * 2 ** (self._failures - 1), _MAX_BACKOFF_S))
            with suppress(NatsError, TimeoutError):
                await self._ensure_exists()
        finally:
            self._cancellable = False

    async def _idle(self) -> None:
        """Hook: the server says the consumer is alive and has nothing to deliver."""

    async def _ensure_exists(self) -> None:
        try:
            await self._js.consumer_info(self._stream, self.name, timeout=_API_TIMEOUT_S)
        except NotFoundError:
            log.warning("consumer %s is gone from the server; creating it again", self.name)
            await self._create()

    async def _handle_batch(self, msgs: Sequence[Msg]) -> None:
        for index, msg in enumerate(msgs):
            if self._stopping:
                await self._release(msgs[index:])
                return
            await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        raise NotImplementedError

    async def _release(self, msgs: Sequence[Msg]) -> None:
        """Hook: gives back messages fetched but not handled when stopping."""


class WorkConsumer(Consumer, Generic[M]):
    """A durable pull consumer: replicas with the same durable name share its messages."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        config: api.ConsumerConfig,
        batch: int,
        message_type: type[M],
        handler: Handler[M],
        concurrency: int = 1,
    ) -> None:
        super().__init__(nc, stream, config, batch)
        self._type = message_type
        self._handler = handler
        self._concurrency = max(1, concurrency)
        self._max_deliver = config.max_deliver or 1
        self._ack_wait_s = config.ack_wait or 30.0
        self._seen = _LruSet(DEDUPE_CAPACITY)

    async def _handle_batch(self, msgs: Sequence[Msg]) -> None:
        touched = time.monotonic()
        for index in range(0, len(msgs), self._concurrency):
            if self._stopping:
                await self._release(msgs[index:])
                return
            if time.monotonic() - touched > self._ack_wait_s / 3:
                # The rest of the batch waits on slow handlers: keep it from being redelivered.
                await _settle(*(m.in_progress for m in msgs[index:]))
                touched = time.monotonic()
            # Handlers of a group start in delivery order and run together, so a handler that
            # waits (on a micro-batcher, a publish) does not hold up the others.
            group = msgs[index : index + self._concurrency]
            await asyncio.gather(*(self._handle(msg) for msg in group))

    async def _handle(self, msg: Msg) -> None:
        try:
            event = parse_event(msg, self._type)
        except InvalidArgument as err:
            await self._terminate(msg, f"poison message on {msg.subject}: {err}")
            return
        if event.id in self._seen:
            self.duplicates += 1
            await _settle(msg.ack)
        elif await self._call(event, msg.subject):
            self._seen.add(event.id)
            await _settle(msg.ack)
        elif event.delivery >= self._max_deliver:
            await self._terminate(msg, f"event {event.id} failed {event.delivery} times")
        else:
            await _settle(lambda: msg.nak(delay=nak_delay_s(event.delivery)))

    async def _call(self, event: Event[M], subject: str) -> bool:
        ok = await run_handler(self._handler, event, subject, self.name)
        self.processed += ok
        self.failed += not ok
        return ok

    async def _terminate(self, msg: Msg, why: str) -> None:
        self.terminated += 1
        log.error("consumer %s gives up on a message: %s", self.name, why)
        await _settle(msg.term)

    async def _release(self, msgs: Sequence[Msg]) -> None:
        await _settle(*(m.nak for m in msgs))


class Follower(Consumer):
    """An ephemeral, unacknowledged consumer that one process uses to follow a stream in order.

    Nothing acknowledges what it delivers, so nothing would redeliver a message lost on the way
    (in a reconnect, or dropped by nats-py when a fetch fails half-way). The follower therefore
    checks that consumer sequences count up by one, and after a gap, or when the server lost the
    consumer (a restart), replaces it with a new one that starts right after the last message
    handled: nothing is missed, nothing is handled twice. Resuming by sequence delivers every
    message after that one, which is what LAST_PER_SUBJECT gives for a KV bucket of history 1.

    Args:
        nc: The NATS connection.
        stream: The stream to follow.
        subject: Subject filter within the stream.
        on_message: Awaited for each message, in stream order; what it raises is logged.
        deliver: Where to start: NEW (what comes from now on) or LAST_PER_SUBJECT (the latest
            message of each subject first, as a KV watcher does).
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        subject: str,
        on_message: RawHandler,
        deliver: api.DeliverPolicy = api.DeliverPolicy.NEW,
    ) -> None:
        config = api.ConsumerConfig(
            name=_follower_name(),
            filter_subject=subject,
            deliver_policy=deliver,
            ack_policy=api.AckPolicy.NONE,
            inactive_threshold=FOLLOWER_INACTIVE_S,
            mem_storage=True,
            num_replicas=1,
        )
        super().__init__(nc, stream, config, batch=256)
        self._on_message = on_message
        self._last_seq: int | None = None  # stream sequence of the last message handled
        self._last_cseq = 0  # its consumer sequence, which counts up by one per message
        self._suspect = False  # a fetch failed: messages may have been lost on the way
        self.caught_up = asyncio.Event()
        """Set once every message that existed at start was handled."""

    async def _create(self) -> None:
        if self._last_seq is not None:
            self._config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            self._config.opt_start_seq = self._last_seq + 1
        info = await self._js.add_consumer(
            self._stream, config=self._config, timeout=_API_TIMEOUT_S
        )
        self._last_cseq = 0
        if self._config.deliver_policy == api.DeliverPolicy.NEW and info.delivered is not None:
            self._last_seq = info.delivered.stream_seq  # resume after this, not from the start
        if not info.num_pending:
            self.caught_up.set()

    async def _resync(self) -> None:
        """Replaces the consumer with a new one that starts after the last message handled; what
        the old one still sends goes to an inbox nobody reads."""
        old_name, old_sub = self.name, self._sub
        self._config.name = _follower_name()
        try:
            await self._create()
        except BaseException:
            self._config.name = old_name
            raise
        self._sub = await self._js.pull_subscribe_bind(consumer=self.name, stream=self._stream)
        if old_sub is not None:
            with suppress(NatsError):
                await old_sub.unsubscribe()
        with suppress(NatsError, TimeoutError):  # else the server drops it when inactive
            await self._js.delete_consumer(self._stream, old_name)

    async def _ensure_exists(self) -> None:
        try:
            info = await self._js.consumer_info(self._stream, self.name, timeout=_API_TIMEOUT_S)
        except NotFoundError:
            log.warning("follower %s is gone from the server; resuming", self.name)
            await self._resync()
            return
        if info.delivered is not None and info.delivered.consumer_seq > self._last_cseq:
            await self._resync()  # delivered more than we got: some were lost on the way
        self._suspect = False

    async def _recover(self, err: BaseException | None) -> None:
        self._suspect = True
        await super()._recover(err)

    async def _idle(self) -> None:
        if self._suspect:
            with suppress(NatsError, TimeoutError):
                await self._ensure_exists()

    async def _handle_batch(self, msgs: Sequence[Msg]) -> None:
        for msg in msgs:
            if self._stopping:
                return
            meta = msg.metadata
            if meta.consumer != self.name:
                continue  # sent by a consumer we replaced
            if meta.sequence.consumer != self._last_cseq + 1:
                log.warning("follower %s missed messages; resuming", self.name)
                self._suspect = True
                with suppress(NatsError, TimeoutError):
                    await self._resync()
                return
            self._last_cseq = meta.sequence.consumer
            await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if self._last_seq is not None and seq <= self._last_seq:
            return  # handled before the consumer was replaced
        self._last_seq = seq
        try:
            await self._on_message(msg)
        except Exception:
            log.exception("follower %s failed on message %d of %s", self.name, seq, msg.subject)
        if msg.metadata.num_pending == 0:
            self.caught_up.set()

    async def _after_stop(self) -> None:
        # Best effort: the server would remove it after FOLLOWER_INACTIVE_S anyway.
        with suppress(NatsError, TimeoutError):
            await self._js.delete_consumer(self._stream, self.name)


def _follower_name() -> str:
    return f"follow_{uuid.uuid4().hex}"


class WatchConsumer(Follower, Generic[M]):
    """A follower of new events: every process that watches gets every event."""

    def __init__(
        self, nc: Client, stream: str, subject: str, message_type: type[M], handler: Handler[M]
    ) -> None:
        super().__init__(nc, stream, subject, self._event)
        self._type = message_type
        self._handler = handler

    async def _event(self, msg: Msg) -> None:
        try:
            event = parse_event(msg, self._type)
        except InvalidArgument as err:
            self.terminated += 1
            log.error("watch %s skips a message on %s: %s", self.name, msg.subject, err)
            return
        ok = await run_handler(self._handler, event, msg.subject, self.name)
        self.processed += ok
        self.failed += not ok


async def run_handler(handler: Handler[M], event: Event[M], subject: str, consumer: str) -> bool:
    """Runs `handler` in a CONSUMER span that continues the publisher's trace.

    Returns:
        Whether it succeeded; a failure is logged with its traceback.
    """
    parent = propagate.extract(event.headers)
    attributes = {"messaging.system": "nats", "messaging.message.id": event.id}
    with _tracer.start_as_current_span(
        f"process {subject}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ):
        try:
            await handler(event)
        except Exception:
            log.warning(
                "handler of %s failed on event %s (delivery %d)",
                consumer, event.id, event.delivery, exc_info=True,
            )  # fmt: skip
            return False
    return True


def nak_delay_s(delivery: int) -> float:
    """Seconds before a failed event is redelivered: 0.25 s, doubling per attempt, at most 5 s."""
    return float(min(0.25 * 2 ** (delivery - 1), 5.0))


async def _settle(*actions: Callable[[], Awaitable[None]]) -> None:
    """Sends acks; a lost ack only means a redelivery, which the dedupe absorbs."""
    for action in actions:
        try:
            await action()
        except NatsError as err:
            log.warning("could not acknowledge a message (%r); it will be redelivered", err)


class _LruSet:
    """A set that forgets its oldest entries beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def add(self, item: str) -> None:
        self._items[item] = None
        self._items.move_to_end(item)
        if len(self._items) > self._capacity:
            self._items.popitem(last=False)
