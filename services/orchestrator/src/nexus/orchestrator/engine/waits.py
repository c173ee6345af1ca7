"""`wait_event` steps: the event is looked for in the JetStream stream that holds the step's
subject, from the stream's sequence when the step began waiting, so an event stored while no
replica was running (a SIGKILL, a nats-server restart) is found when the run is next advanced.
The stream is the truth; what wakes a waiting run early is only a hint: each replica keeps a
core NATS subscription on the subject filter of every run the mirror shows waiting, and wakes
those runs when a message comes; a poll (`wait_event_poll_s`) and a wake of every waiting run
when a replica starts cover hints lost in between."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from google.protobuf import message_factory
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from nexus.common.errors import InvalidArgument, NexusError, Unavailable
from nexus.common.events import Event, parse_event
from nexus.orchestrator import expressions
from nexus.orchestrator.definitions.parsing import find_message
from nexus.orchestrator.engine.calls import to_json
from nexus.orchestrator.engine.records import WAITING, RunRecord

log = logging.getLogger(__name__)

KIND = "wait_event"
SCAN_LIMIT = 1000
"""Events under a step's subject read per advance (the rest at the next one)."""
KEEP_SUBSCRIPTION_S = 10.0
"""How long a replica keeps a subject's subscription after no run it mirrors waits on it."""


def event_value(event: Event[Any]) -> dict[str, Any]:
    """`event` of expressions (a trigger's, a `wait_event` condition's) and a `wait_event`
    step's output: the CloudEvent's attributes and its payload as protobuf JSON (field names as
    in the protos)."""
    return {
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "subject": event.subject,
        "about": event.subject_hint,
        "time": event.time.astimezone(UTC).isoformat(),
        "data": to_json(event.data),
    }


@dataclass(frozen=True)
class Scan:
    """What one look at the stream found.

    Attributes:
        event: The first event that passed the condition (its `event_value`), or None.
        next_seq: The stream sequence to read from next time.
        more: The scan stopped at `SCAN_LIMIT` with events left to read.
    """

    event: dict[str, Any] | None
    next_seq: int
    more: bool = False


class EventLog:
    """Reads a stream's events under a subject filter from a sequence on.

    Args:
        nc: The NATS connection.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._js = nc.jetstream()

    async def start_seq(self, stream: str) -> int:
        """The sequence the next event stored in `stream` will get.

        Raises:
            Unavailable: NATS does not answer.
        """
        try:
            info = await self._js.stream_info(stream)
        except (NatsError, TimeoutError) as err:
            raise Unavailable(f"cannot read the stream {stream}: {err!r}") from err
        return int(info.state.last_seq) + 1

    async def seq_since(self, stream: str, subject: str, when: float) -> int:
        """The sequence to read `subject`'s events in `stream` from so that none stored at or
        after `when` (epoch seconds, this replica's clock against nats-server's) is passed:
        a binary search over the stored messages, whose times grow with their sequences.

        Raises:
            Unavailable: NATS does not answer.
        """
        try:
            state = (await self._js.stream_info(stream)).state
        except (NatsError, TimeoutError) as err:
            raise Unavailable(f"cannot read the stream {stream}: {err!r}") from err
        low, high = int(state.first_seq), int(state.last_seq) + 1
        while low < high:
            middle = (low + high) // 2
            raw = await self._next(stream, subject, middle)
            if raw is None:
                high = middle  # nothing on the subject from here on
            elif raw.time is not None and raw.time.timestamp() >= when:
                high = middle
            else:
                low = int(raw.seq or middle) + 1
        return low

    async def scan(
        self,
        wait: dict[str, Any],
        type_name: str,
        matches: Callable[[dict[str, Any]], bool],
        until: float,
    ) -> Scan:
        """The first event of `wait` (`stream`, `subject`, `next_seq`) of type `type_name`
        stored before `until` (0: any time) that `matches`; events of another type are passed.

        Raises:
            Unavailable: NATS does not answer.
            ExpressionError: The condition fails on an event.
        """
        message_type = _message_class(type_name)
        seq = int(wait["next_seq"])
        for _ in range(SCAN_LIMIT):
            raw = await self._next(wait["stream"], wait["subject"], seq)
            if raw is None:
                return Scan(None, seq)
            if until and raw.time is not None and raw.time.timestamp() > until:
                return Scan(None, seq)  # stored after the step's timeout
            seq = int(raw.seq or seq) + 1
            msg = Msg(
                self._nc, subject=raw.subject or "", data=raw.data or b"", headers=raw.headers
            )
            try:
                event = event_value(parse_event(msg, message_type))
            except InvalidArgument:
                continue  # another type on the same subject, or not a CloudEvent
            if matches(event):
                return Scan(event, seq)
        return Scan(None, seq, more=True)

    async def _next(self, stream: str, subject: str, seq: int) -> Any:
        try:
            return await self._js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return None
        except (NatsError, TimeoutError) as err:
            raise Unavailable(f"cannot read the stream {stream}: {err!r}") from err


def condition_of(source: str, context: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """The step's condition over `event` and the run's context ("": every event).

    Raises (when called):
        ExpressionError: The condition fails on an event.
    """

    def matches(event: dict[str, Any]) -> bool:
        return not source or expressions.condition(source, {**context, "event": event})

    return matches


def waiting_on(run: RunRecord) -> str:
    """The subject filter the run waits on ("": it waits on none)."""
    current = run.current
    if run.state != WAITING or current is None or current.kind != KIND:
        return ""
    return str((current.input or {}).get("subject", ""))


class EventHints:
    """Wakes runs waiting for an event when a message comes on their subject (a hint: the
    step then reads the stream).

    Args:
        nc: The NATS connection.
        runs: The runs the mirror holds now.
        wake: Wakes one run (bumps its tick with compare-and-set and publishes its advance).
    """

    def __init__(
        self,
        nc: Client,
        runs: Callable[[], list[RunRecord]],
        wake: Callable[[RunRecord], Awaitable[None]],
    ) -> None:
        self._nc = nc
        self._runs = runs
        self._wake = wake
        self._subscriptions: dict[str, Subscription] = {}
        self._used: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._noted: dict[str, tuple[RunRecord, float]] = {}  # begun here: run, when
        self._signal = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._since = 0.0

    async def start(self) -> None:
        self._since = time.time()
        self._task = asyncio.create_task(self._wake_loop(), name="orchestrator-event-hints")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for subscription in self._subscriptions.values():
            with contextlib.suppress(NatsError):
                await subscription.unsubscribe()
        self._subscriptions.clear()

    async def ensure(self, subject: str) -> None:
        """Subscribes to `subject` (before a step looks at the stream: whatever is stored
        after that look is hinted)."""
        self._used[subject] = time.monotonic()
        if subject in self._subscriptions:
            return
        try:
            self._subscriptions[subject] = await self._nc.subscribe(
                subject, cb=functools.partial(self._hint, subject)
            )
        except NatsError as err:
            raise Unavailable(f"cannot subscribe to {subject}: {err!r}") from err

    def note(self, run: RunRecord) -> None:
        """A run this replica just began waiting (hinted even before its mirror shows it)."""
        self._noted[run.run_id] = (run, time.monotonic())

    async def refresh(self) -> None:
        """Follows the subjects the mirrored runs wait on; on the first turn, wakes every run
        that began waiting before this replica started (events may have come while no replica
        ran)."""
        now = time.monotonic()
        live = self._runs()
        self._forget_noted(live)
        waiting = [(run, waiting_on(run)) for run in live]
        for run, subject in waiting:
            if subject:
                await self.ensure(subject)
                if not self._started and run.current and run.current.started < self._since:
                    await self._wake_one(run)
        self._started = True
        for subject in [s for s, used in self._used.items() if now - used > KEEP_SUBSCRIPTION_S]:
            del self._used[subject]
            subscription = self._subscriptions.pop(subject, None)
            if subscription is not None:
                with contextlib.suppress(NatsError):
                    await subscription.unsubscribe()

    async def _hint(self, subject: str, _msg: Msg) -> None:
        self._dirty.add(subject)
        self._signal.set()

    async def _wake_loop(self) -> None:
        while True:
            await self._signal.wait()
            self._signal.clear()
            dirty, self._dirty = self._dirty, set()
            runs = {run.run_id: run for run in self._runs()}
            for run_id, (noted, _) in self._noted.items():
                if run_id not in runs or runs[run_id].tick < noted.tick:
                    runs[run_id] = noted
            for run in runs.values():
                if not run.done and waiting_on(run) in dirty:
                    await self._wake_one(run)

    def _forget_noted(self, live: list[RunRecord]) -> None:
        """Drops the noted runs that the mirror shows as far on, or noted long ago."""
        ticks = {run.run_id: run.tick for run in live}
        now = time.monotonic()
        for run_id, (noted, when) in list(self._noted.items()):
            if ticks.get(run_id, -1) >= noted.tick or now - when > KEEP_SUBSCRIPTION_S:
                del self._noted[run_id]

    async def _wake_one(self, run: RunRecord) -> None:
        try:
            await self._wake(run)
        except NexusError as err:  # the poll tries again
            log.warning("cannot wake run %s for an event: %s", run.run_id, err)


def _message_class(type_name: str) -> Any:
    descriptor = find_message(type_name)
    if descriptor is None:
        raise InvalidArgument.for_field("type", f"unknown message type {type_name}")
    return message_factory.GetMessageClass(descriptor)
