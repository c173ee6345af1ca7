"""Followers: ephemeral, unacknowledged consumers that one process uses to follow a stream in
order (`EventBus.watch`, `nexus.common.kv.KvFollower`)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from contextlib import suppress
from typing import Generic

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import NotFoundError

from nexus.common.errors import InvalidArgument
from nexus.common.events._consumer import (
    API_TIMEOUT_S,
    Consumer,
    Handler,
    RawHandler,
    run_handler,
)
from nexus.common.events._envelope import M, parse_event

log = logging.getLogger(__name__)

FOLLOWER_INACTIVE_S = 60.0
"""The server removes a follower's ephemeral consumer this long after its process stopped."""


class Follower(Consumer):
    """An ephemeral, unacknowledged consumer that one process uses to follow a stream in order.

    Nothing acknowledges what it delivers, so nothing would redeliver a message lost on the way
    (in a reconnect). The follower therefore checks that consumer sequences count up by one, and
    after a gap, or when the server lost the consumer (a restart), replaces it with a new one
    that starts right after the last message handled: nothing is missed, nothing is handled
    twice. Resuming by sequence delivers every message after that one, which is what
    LAST_PER_SUBJECT gives for a KV bucket of history 1.

    Args:
        nc: The NATS connection.
        stream: The stream to follow.
        subject: Subject filter within the stream.
        on_message: Awaited for each message, in stream order; what it raises is logged.
        deliver: Where to start: NEW (what comes from now on) or LAST_PER_SUBJECT (the latest
            message of each subject first, as a KV watcher does).
        gather_s: Once caught up, how long to let messages gather after each batch handled
            (0: none): a stream written to steadily (a record rewritten at each step of a run)
            is then handled in batches, each wake-up of the process shared by several messages,
            at the cost of that much delay.
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        subject: str,
        on_message: RawHandler,
        deliver: api.DeliverPolicy = api.DeliverPolicy.NEW,
        gather_s: float = 0.0,
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
        self._gather_s = gather_s
        self._last_seq: int | None = None  # stream sequence of the last message handled
        self._last_cseq = 0  # its consumer sequence, which counts up by one per message
        self._suspect = False  # the server fell silent: messages may have been lost on the way
        self.caught_up = asyncio.Event()
        """Set once every message that existed at start was handled."""

    async def _create(self) -> None:
        if self._last_seq is not None:
            self._config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            self._config.opt_start_seq = self._last_seq + 1
        info = await self._js.add_consumer(self._stream, config=self._config, timeout=API_TIMEOUT_S)
        self._last_cseq = 0
        if self._config.deliver_policy == api.DeliverPolicy.NEW and info.delivered is not None:
            self._last_seq = info.delivered.stream_seq  # resume after this, not from the start
        if not info.num_pending:
            self.caught_up.set()

    async def _resync(self) -> None:
        """Replaces the consumer with a new one that starts after the last message handled;
        what the old one still sends is skipped."""
        old_name = self.name
        self._config.name = _follower_name()
        try:
            await self._create()
        except BaseException:
            self._config.name = old_name
            raise
        self._pull = None  # pull from the new consumer
        with suppress(NatsError, TimeoutError):  # else the server drops it when inactive
            await self._js.delete_consumer(self._stream, old_name)

    async def _ensure_exists(self) -> None:
        try:
            info = await self._js.consumer_info(self._stream, self.name, timeout=API_TIMEOUT_S)
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
        if self._gather_s and self.caught_up.is_set() and not self._stopping:
            self._cancellable = True  # every message in hand handled: stop() may cancel
            try:
                await asyncio.sleep(self._gather_s)
            finally:
                self._cancellable = False

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
    """A follower of new events: every process that watches gets every event. A message that
    is not a valid event is skipped with an error log (the durable consumers of its stream
    dead-letter it)."""

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
        error = await run_handler(self._handler, event, msg.subject, self.name)
        self.processed += error is None
        self.failed += error is not None
