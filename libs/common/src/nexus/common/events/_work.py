"""Durable work consumers: replicas share the events, each is handled once or dead-lettered."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from typing import Generic

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api

from nexus.common.caching import TTLCache
from nexus.common.errors import InvalidArgument, NexusError
from nexus.common.events._consumer import (
    BatchHandler,
    Consumer,
    Handler,
    acknowledge,
    run_batch_handler,
    run_handler,
    settle,
)
from nexus.common.events._deadletters import DeadLetterReason, store_dead_letter
from nexus.common.events._envelope import Event, M, delivery_of, parse_event
from nexus.common.events._streams import DEAD_LETTERS, ensure_stream

log = logging.getLogger(__name__)

DEDUPE_CAPACITY = 10_000
"""Event ids a work consumer remembers as processed, to skip redelivered duplicates."""
DEAD_LETTER_RETRY_S = 5.0
"""When a dead letter could not be stored, the event comes back after this long to try again."""


class DurableConsumer(Consumer, Generic[M]):
    """A durable pull consumer: replicas with the same durable name share its messages.

    Each event is acknowledged once handled, or redelivered after a delay when its handling
    failed. An event that failed `max_deliver` times, that its handler rejected
    (`InvalidArgument`), or that is not a valid event goes to the dead-letter stream, and is
    terminated only once its dead letter is stored: the server is told to redeliver without
    limit, and this consumer counts the deliveries. Subclasses say how a fetched batch's events
    reach the handler (`_work`).
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        config: api.ConsumerConfig,
        batch: int,
        message_type: type[M],
        *,
        max_deliver: int = 5,
        prefetch: bool = True,
    ) -> None:
        super().__init__(nc, stream, config, batch, prefetch=prefetch)
        self._type = message_type
        self._max_deliver = max(1, max_deliver)
        self._ack_wait_s = config.ack_wait or 30.0
        self._seen: TTLCache[str, bool] = TTLCache("event_ids_processed", maxsize=DEDUPE_CAPACITY)
        # The last failure of each event not handled yet, for its dead letter.
        self._errors: TTLCache[str, str] = TTLCache("event_failures", maxsize=DEDUPE_CAPACITY)

    async def start(self) -> None:
        """Ensures the dead-letter stream, then starts as every consumer does."""
        await ensure_stream(self._js, DEAD_LETTERS)
        await super().start()

    async def _handle_batch(self, msgs: Sequence[Msg]) -> None:
        in_hand = {id(msg): msg for msg in msgs}
        keeping = asyncio.create_task(self._keep_in_progress(in_hand))
        try:
            await self._work(msgs, in_hand)
        finally:
            keeping.cancel()
            with suppress(asyncio.CancelledError):
                await keeping

    async def _work(self, msgs: Sequence[Msg], in_hand: dict[int, Msg]) -> None:
        """Handles and settles every message of a fetched batch (removing each settled one
        from `in_hand`)."""
        raise NotImplementedError

    async def _keep_in_progress(self, in_hand: dict[int, Msg]) -> None:
        """Every third of the ack wait, tells the server that the messages in hand (and those
        delivered behind them) are being worked on, so slow handlers do not get them
        redelivered to another replica meanwhile."""
        while True:
            await asyncio.sleep(self._ack_wait_s / 3)
            waiting = [*in_hand.values(), *(msg for msg in self._received if msg.reply)]
            await settle(*(msg.in_progress for msg in waiting))

    async def _admit(self, msg: Msg) -> Event[M] | None:
        """The event a message carries when it is to be handled; None when it was settled here
        (a poison message or an event past its deliveries dead-lettered, a duplicate acked)."""
        try:
            event = parse_event(msg, self._type)
        except InvalidArgument as err:
            await self._dead_letter(msg, DeadLetterReason.POISON, str(err))
            return None
        if self._seen.get(event.id):
            self.duplicates += 1
            await settle(msg.ack)
            return None
        return await self._within_deliveries(event, msg)

    async def _within_deliveries(self, event: Event[M], msg: Msg) -> Event[M] | None:
        """The event, unless it is past its deliveries (then dead-lettered here: None)."""
        if event.delivery > self._max_deliver:
            # Its dead letter could not be stored last time, or no handler call ever finished
            # (the process stopped, or the handler outlasted the ack wait).
            why = self._errors.get(event.id) or "no attempt finished (stopped or past ack wait)"
            await self._dead_letter(msg, DeadLetterReason.FAILED, why)
            return None
        return event

    async def _settle(self, event: Event[M], msg: Msg, error: Exception | None) -> None:
        """Acknowledges a handled event, or dead-letters or redelivers it after `error`."""
        if error is None:
            self._handled(event)
            await settle(msg.ack)
            return
        self.failed += 1
        why = _describe(error)
        if isinstance(error, InvalidArgument):  # the event itself is wrong: retrying won't help
            await self._dead_letter(msg, DeadLetterReason.REJECTED, why)
        elif event.delivery >= self._max_deliver:
            await self._dead_letter(msg, DeadLetterReason.FAILED, why)
        else:
            self._errors.set(event.id, why)
            await settle(lambda: msg.nak(delay=nak_delay_s(event.delivery)))

    def _handled(self, event: Event[M]) -> None:
        """Counts an event handled, to be acknowledged (and skipped if delivered again)."""
        self.processed += 1
        self._seen.set(event.id, True)
        self._errors.delete(event.id)

    async def _admit_batch(self, msgs: Sequence[Msg]) -> list[tuple[Event[M], Msg]]:
        """The events of a batch's messages that are to be handled, as `_admit` decides for
        each, with one look-up of the batch's ids among those processed; duplicates are
        acknowledged together."""
        parsed: list[tuple[Event[M], Msg]] = []
        for msg in msgs:
            try:
                parsed.append((parse_event(msg, self._type), msg))
            except InvalidArgument as err:
                await self._dead_letter(msg, DeadLetterReason.POISON, str(err))
        seen = self._seen.contains_many([event.id for event, _ in parsed])
        admitted: list[tuple[Event[M], Msg]] = []
        duplicates: list[Msg] = []
        for (event, msg), was_seen in zip(parsed, seen, strict=True):
            if was_seen:
                duplicates.append(msg)
            elif await self._within_deliveries(event, msg) is not None:
                admitted.append((event, msg))
        self.duplicates += len(duplicates)
        await acknowledge(self._nc, duplicates)
        return admitted

    async def _dead_letter(self, msg: Msg, reason: DeadLetterReason, why: str) -> None:
        """Stores the message in the dead-letter stream, then terminates it; when the store
        fails, the message comes back later to try again (never dropped)."""
        try:
            await store_dead_letter(
                self._js, msg, stream=self._stream, consumer=self.name, reason=reason, error=why
            )
        except (NexusError, NatsError) as err:
            log.error(
                "consumer %s cannot store a dead letter (%s); the message stays and comes again",
                self.name, err,
            )  # fmt: skip
            await settle(lambda: msg.nak(delay=DEAD_LETTER_RETRY_S))
            return
        self.terminated += 1
        log.error(
            "consumer %s moved a message of %s to %s after %d deliveries (%s): %s",
            self.name, msg.subject, DEAD_LETTERS.name, delivery_of(msg), reason.value, why,
        )  # fmt: skip
        await settle(msg.term)

    async def _release(self, msgs: Sequence[Msg]) -> None:
        await settle(*(m.nak for m in msgs))


class WorkConsumer(DurableConsumer[M]):
    """A durable consumer whose handler takes one event at a time; `concurrency` handlers of a
    batch run together, and each event is settled as soon as its own handler returned."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        config: api.ConsumerConfig,
        batch: int,
        message_type: type[M],
        handler: Handler[M],
        *,
        concurrency: int = 1,
        max_deliver: int = 5,
        prefetch: bool = True,
    ) -> None:
        super().__init__(
            nc, stream, config, batch, message_type, max_deliver=max_deliver, prefetch=prefetch
        )
        self._handler = handler
        self._concurrency = max(1, concurrency)

    async def _work(self, msgs: Sequence[Msg], in_hand: dict[int, Msg]) -> None:
        for index in range(0, len(msgs), self._concurrency):
            if self._stopping:
                await self._release(msgs[index:])
                return
            # Handlers of a group start in delivery order and run together, so a handler
            # that waits (on a micro-batcher, a publish) does not hold up the others.
            group = msgs[index : index + self._concurrency]
            await asyncio.gather(*(self._handle_one(msg, in_hand) for msg in group))

    async def _handle_one(self, msg: Msg, in_hand: dict[int, Msg]) -> None:
        try:
            event = await self._admit(msg)
            if event is not None:
                error = await run_handler(self._handler, event, msg.subject, self.name)
                await self._settle(event, msg, error)
        except Exception:  # a bug: give the message back now rather than after the ack wait
            log.exception("consumer %s failed on a message of %s", self.name, msg.subject)
            await settle(msg.nak)
        finally:
            in_hand.pop(id(msg), None)


class BatchWorkConsumer(DurableConsumer[M]):
    """A durable consumer whose handler takes a fetched batch's events at once (to score them
    as one matrix, to write state once per batch). Each message is still settled on its own, by
    the outcome the handler returned for its event; poison messages, duplicates and events past
    their deliveries are settled before, and never reach the handler.

    With `depth` > 1, that many batches are handled at once, each started as the one before it
    was taken (in delivery order): the handler must then order what must stay in order itself
    (the anomaly stream learns one batch at a time, and parses the next meanwhile)."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        config: api.ConsumerConfig,
        batch: int,
        message_type: type[M],
        handler: BatchHandler[M],
        *,
        max_deliver: int = 5,
        depth: int = 1,
    ) -> None:
        super().__init__(nc, stream, config, batch, message_type, max_deliver=max_deliver)
        self._handler = handler
        self._depth = max(1, depth)
        self._in_flight: deque[asyncio.Task[None]] = deque()

    async def _run(self) -> None:
        try:
            await super()._run()
        finally:
            await self._finish_in_flight()

    async def _handle_batch(self, msgs: Sequence[Msg]) -> None:
        """Handles a batch; with `depth` > 1, starts it and returns once fewer than `depth`
        batches are in hand, so that the loop takes the next meanwhile."""
        if self._depth == 1:
            await super()._handle_batch(msgs)
            return
        self._in_flight.append(asyncio.create_task(super()._handle_batch(msgs)))
        while len(self._in_flight) >= self._depth:
            await self._finished(self._in_flight.popleft())

    async def _finish_in_flight(self) -> None:
        """Waits for the batches in hand; cancels them first when the consumer itself is being
        cancelled (their messages come again after the ack wait)."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            for batch in self._in_flight:
                batch.cancel()
        while self._in_flight:
            await self._finished(self._in_flight.popleft())

    async def _finished(self, batch: asyncio.Task[None]) -> None:
        try:
            await asyncio.shield(batch)
        except asyncio.CancelledError:
            if not batch.cancelled():
                raise  # the consumer is being cancelled, not the batch
        except Exception:  # a bug: its messages come again after the ack wait
            log.exception("consumer %s failed on a batch", self.name)

    async def _work(self, msgs: Sequence[Msg], in_hand: dict[int, Msg]) -> None:
        if self._stopping:
            await self._release(msgs)
            return
        admitted = await self._admit_batch(msgs)
        if not admitted:
            return
        try:
            outcomes = await run_batch_handler(
                self._handler, [event for event, _ in admitted], self.name
            )
        except Exception:  # a bug: give the messages back now rather than after the ack wait
            log.exception("consumer %s failed on a batch", self.name)
            await self._release([msg for _, msg in admitted])
            return
        handled = []
        for (event, msg), error in zip(admitted, outcomes, strict=True):
            if error is None:
                self._handled(event)
                handled.append(msg)
            else:
                await self._settle(event, msg, error)
        await acknowledge(self._nc, handled)


def nak_delay_s(delivery: int) -> float:
    """Seconds before a failed event is redelivered: 0.25 s, doubling per attempt, at most 5 s."""
    return float(min(0.25 * 2 ** (delivery - 1), 5.0))


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
