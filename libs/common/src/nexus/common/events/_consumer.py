"""Pull consumers: a background loop per JetStream consumer that asks for messages itself and
never drops one that the server delivered.

nats-py's `fetch` was not used: when a status it did not expect reached the subscription in the
middle of a batch (a 400 "heartbeat value too large" answering its own pull request without
`expires`, sent whenever messages of an earlier request were still queued), it raised and
dropped every message it had already taken off the queue. They came back only after the ack
wait, and, lost the same way again, were given up after `max_deliver` deliveries.

Here each consumer has one inbox subscription for its whole life. A pull request asks for
`batch` messages with an expiry and idle heartbeats, and its reply subject names it, so the
loop knows which request a status ends. Every message of the stream that reaches the inbox is
handled, whichever request brought it. Silence (no message, no heartbeat, no end of request)
means the connection or the consumer is gone: back off, check the consumer, ask again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from opentelemetry import propagate, trace

from nexus.common.events._envelope import Event, M
from nexus.common.nats import NexusClient

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("nexus.events")

FETCH_TIMEOUT_S = 2.0
"""How long one pull request waits on the server for messages (its expiry)."""
HEARTBEAT_S = 0.5
"""How often the server says it is alive while a pull request waits with nothing to send."""
_SILENCE_S = 3 * HEARTBEAT_S  # nothing at all for this long: the connection or consumer is gone
API_TIMEOUT_S = 2.0
_MAX_BACKOFF_S = 2.0
_STOP_GRACE_S = 10.0
_STATUS = "Status"
_HEARTBEAT = "100"
_REQUEST_DONE = ("404", "408")  # the server has nothing (more) for this request

Handler = Callable[[Event[M]], Awaitable[None]]
BatchHandler = Callable[[Sequence[Event[M]]], Awaitable[Sequence[Exception | None]]]
"""Handles a fetched batch's events at once and returns, for each event in order, None when it
was handled or what went wrong with it: `InvalidArgument` rejects the event (a dead letter at
once), anything else has it delivered again."""
MAX_SPAN_LINKS = 128
"""Publisher traces a batch's span links to (the first events'); OpenTelemetry keeps 128."""
RawHandler = Callable[[Msg], Awaitable[None]]


class PullRefused(Exception):
    """The server ended a pull request with an error status (400, 409, 503...)."""


@dataclass
class _Pull:
    """The pull request the loop waits on: its reply subject, and how many messages it may
    still bring."""

    reply: str
    remaining: int


class Consumer:
    """A background task that pulls messages from one JetStream consumer and handles each.

    Build one with `EventBus.consume` or `EventBus.watch`, end it with `stop()`.

    Attributes:
        processed: Handler calls that succeeded.
        failed: Handler calls that raised.
        duplicates: Deliveries skipped because this consumer had already processed their event id.
        terminated: Messages given up on: a work consumer's dead letters, a watch's skipped
            (unparseable) messages.
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        config: api.ConsumerConfig,
        batch: int,
        *,
        prefetch: bool = True,
    ) -> None:
        self._nc = nc
        self._prefetch = prefetch
        self._js: JetStreamContext = nc.jetstream()
        self._stream = stream
        self._config = config
        self._batch = batch
        self._inbox = ""  # pull request n replies to f"{inbox}.{n}"
        self._sub: Subscription | None = None
        self._received: deque[Msg] = deque()  # delivered, not yet taken into a batch
        self._arrived = asyncio.Event()
        self._pull: _Pull | None = None
        self._requests = 0
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
        """Whether the pull loop is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Creates (or binds to) the JetStream consumer and starts the pull loop."""
        await self._create()
        self._inbox = self._nc.new_inbox()
        # No pending limits: what is in flight is bounded by the pull requests, and a message
        # nats-py dropped as a "slow consumer" would only come back after the ack wait.
        self._sub = await self._nc.subscribe(
            f"{self._inbox}.*", cb=self._receive, pending_msgs_limit=0, pending_bytes_limit=0
        )
        self._task = asyncio.create_task(self._run(), name=f"nexus-consumer-{self.name}")

    async def stop(self) -> None:
        """Stops the loop after the messages in hand; those delivered but not handled go back
        to the server."""
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
        await self._release([msg for msg in self._received if msg.reply])
        self._received.clear()
        await self._after_stop()

    async def _create(self) -> None:
        await self._js.add_consumer(self._stream, config=self._config, timeout=API_TIMEOUT_S)

    async def _after_stop(self) -> None:
        """Hook: what to clean up on the server once stopped."""

    async def _receive(self, msg: Msg) -> None:
        self._received.append(msg)
        self._arrived.set()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                msgs = await self._next()
                if msgs:
                    await self._handle_batch(msgs)
            except Exception:  # a bug must not end the consumer silently
                log.exception("consumer %s failed; going on in a second", self.name)
                await asyncio.sleep(1.0)

    async def _next(self) -> list[Msg]:
        """The messages that arrived (at most `batch`), after asking for more when no request
        is open; [] after a heartbeat, the end of a request, or trouble."""
        if self._pull is None and not await self._request():
            return []
        if not await self._wait():
            await self._recover(None)
            return []
        msgs = await self._take()
        if msgs and self._pull is None and self._prefetch:
            # Ask for the next batch now: it arrives while this one is handled. Trouble waits
            # for the next turn, which asks again (and recovers) with no message in hand.
            # Without prefetch (long work), the next message stays on the server for an idle
            # replica to take.
            with suppress(NatsError):
                await self._send_pull()
        return msgs

    async def _request(self) -> bool:
        """Sends a pull request for `batch` messages; False when it could not be sent."""
        try:
            await self._send_pull()
        except NatsError as err:
            await self._recover(err)
            return False
        return True

    async def _send_pull(self) -> None:
        self._requests += 1
        pull = _Pull(f"{self._inbox}.{self._requests}", self._batch)
        body = {
            "batch": self._batch,
            "expires": _nanoseconds(FETCH_TIMEOUT_S),
            "idle_heartbeat": _nanoseconds(HEARTBEAT_S),
        }
        subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{self._stream}.{self.name}"
        await self._nc.publish(subject, json.dumps(body).encode(), reply=pull.reply)
        self._pull = pull

    async def _wait(self) -> bool:
        """Waits for the next message on the inbox; False after `_SILENCE_S` of silence."""
        if self._received:
            return True
        self._arrived.clear()
        self._cancellable = True  # holding no message: stop() may cancel the wait
        try:
            await asyncio.wait_for(self._arrived.wait(), _SILENCE_S)
        except TimeoutError:
            return False
        finally:
            self._cancellable = False
        return True

    async def _take(self) -> list[Msg]:
        """Takes the stream's messages that arrived, and acts on the statuses among them; a
        status after messages waits for the next call, so that those are handled first."""
        msgs: list[Msg] = []
        while len(msgs) < self._batch:
            if not self._received:
                await asyncio.sleep(0)  # let the subscription hand over what already arrived
                if not self._received:
                    break
            msg = self._received[0]
            if not msg.reply and msgs:
                break
            self._received.popleft()
            if msg.reply:  # a message of the stream: statuses have no reply subject
                msgs.append(msg)
                self._delivered()
            else:
                await self._status(msg)
        return msgs

    def _delivered(self) -> None:
        self._failures = 0
        if self._pull is not None:
            self._pull.remaining -= 1
            if self._pull.remaining <= 0:
                self._pull = None  # satisfied: the server sends nothing more for it

    async def _status(self, msg: Msg) -> None:
        headers = msg.headers or {}
        code = headers.get(_STATUS, "")
        if code == _HEARTBEAT or self._pull is None or msg.subject != self._pull.reply:
            return  # alive; or the end of a request given up on before
        self._pull = None
        if code in _REQUEST_DONE:
            self._failures = 0
            await self._idle()
        else:
            await self._recover(PullRefused(f"{code} {headers.get('Description', '')}".strip()))

    async def _recover(self, err: BaseException | None) -> None:
        """Backs off, then re-creates the consumer if the server lost it (nats-py reconnects).
        `err` is None when the server fell silent."""
        self._pull = None  # ask again: the server may have forgotten it
        self._failures += 1
        if self._nc.is_closed:
            log.warning("consumer %s stops: the NATS connection is closed", self.name)
            self._stopping = True
            return
        if self._failures in (1, 10) or self._failures % 100 == 0:
            why = err or f"no word from the server for {_SILENCE_S:g} s"
            log.warning("consumer %s cannot pull (%s); retrying", self.name, why)
        self._cancellable = True  # holding no message: stop() may cancel the wait
        try:
            await asyncio.sleep(min(0.1 * 2 ** (self._failures - 1), _MAX_BACKOFF_S))
            with suppress(NatsError, TimeoutError):
                await self._ensure_exists()
        finally:
            self._cancellable = False

    async def _idle(self) -> None:
        """Hook: the server says the consumer is alive and has nothing more to deliver."""

    async def _ensure_exists(self) -> None:
        try:
            await self._js.consumer_info(self._stream, self.name, timeout=API_TIMEOUT_S)
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
        """Hook: gives back messages delivered but not handled when stopping."""


async def run_handler(
    handler: Handler[M], event: Event[M], subject: str, consumer: str
) -> Exception | None:
    """Runs `handler` in a CONSUMER span that continues the publisher's trace.

    Returns:
        None when it succeeded, else what it raised (logged with its traceback). A
        `CancelledError` that did not come from cancelling the consumer (a future the handler
        awaited was cancelled) is a failure like any other.
    """
    parent = propagate.extract(event.headers)
    attributes = {"messaging.system": "nats", "messaging.message.id": event.id}
    with _tracer.start_as_current_span(
        f"process {subject}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ):
        try:
            await handler(event)
        except asyncio.CancelledError as err:
            error: Exception = _cancelled_inside(err)
        except Exception as err:
            error = err
        else:
            return None
    log.warning(
        "handler of %s failed on event %s (delivery %d)",
        consumer, event.id, event.delivery, exc_info=error,
    )  # fmt: skip
    return error


async def run_batch_handler(
    handler: BatchHandler[M], events: Sequence[Event[M]], consumer: str
) -> Sequence[Exception | None]:
    """Runs a batch handler in one CONSUMER span linked to the publishers' traces.

    Returns:
        The handler's outcome per event. When it raised (or returned a wrong count), what it
        raised is every event's outcome (logged with its traceback), so each is retried.
    """
    attributes: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.batch.message_count": len(events),
    }
    with _tracer.start_as_current_span(
        f"process batch {consumer}", kind=trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        if span.is_recording():
            for event in events[:MAX_SPAN_LINKS]:
                parent = trace.get_current_span(propagate.extract(event.headers))
                span.add_link(parent.get_span_context())
        try:
            outcomes = await handler(events)
            if len(outcomes) != len(events):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(events)} events")
            return outcomes
        except asyncio.CancelledError as err:
            error: Exception = _cancelled_inside(err)
        except Exception as err:
            error = err
    log.warning("batch handler of %s failed on %d events", consumer, len(events), exc_info=error)
    return [error] * len(events)


def _cancelled_inside(err: asyncio.CancelledError) -> Exception:
    """A cancellation raised inside a handler (a future it awaited was cancelled) as a failure
    like any other; re-raised when it is the consumer itself being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() > 0:
        raise err
    return RuntimeError(f"cancelled inside the handler: {err!r}")


async def settle(*actions: Callable[[], Awaitable[None]]) -> None:
    """Sends acks; a lost ack only means a redelivery, which the dedupe absorbs."""
    for action in actions:
        try:
            await action()
        except NatsError as err:
            log.warning("could not acknowledge a message (%r); it will be redelivered", err)


async def acknowledge(nc: Client, msgs: Sequence[Msg]) -> None:
    """Acknowledges messages, each on its own, in one write when the client can
    (`NexusClient.publish_empty`); a lost acknowledgement only means a redelivery."""
    if not isinstance(nc, NexusClient):
        await settle(*(msg.ack for msg in msgs))
        return
    try:
        await nc.publish_empty([msg.reply for msg in msgs])
    except NatsError as err:
        log.warning("could not acknowledge %d messages (%r); they will come again", len(msgs), err)


def _nanoseconds(seconds: float) -> int:
    return int(seconds * 1_000_000_000)
