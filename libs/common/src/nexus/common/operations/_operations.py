"""Operations: long work that a service's RPC starts and any of its replicas runs, durably.

`submit` stores the operation QUEUED (KV) and queues its request on the OPERATIONS stream
(`nexus.operations.<service>.<kind>`). Every replica pulls that queue through one durable
consumer (`operations-<service>`), one message per free worker, and runs the kind's work with a
`Progress`; while it runs, the message is kept in progress (`+WPI`) and the record's heartbeat
(`updated`) and progress are written. A replica that dies stops both: JetStream delivers the
message again after the ack wait, and another replica (or the restarted one) runs the work again
as the same idempotent call (`running_as`), so what the first run registered is found, not made
twice. Each attempt takes the record with compare-and-set and writes only while it holds it.
Failures that retrying cannot fix end the operation at once; others are retried up to
`max_attempts`. A sweeper on every replica ends the operations whose heartbeat stopped and whose
message is not coming back, so none stays RUNNING forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

from nexus.api.operations.v1 import events_pb2
from nexus.common.errors import (
    Aborted,
    ErrorCode,
    InvalidArgument,
    NexusError,
    NotFound,
    ResourceExhausted,
)
from nexus.common.events import GIB, MIB, Consumer, Event, EventBus, Stream
from nexus.common.idempotency import idempotent_call, new_id, running_as
from nexus.common.names import check_name
from nexus.common.operations._progress import OperationCancelled, Progress, Snapshot, Tracker
from nexus.common.operations._records import (
    Failure,
    OperationRecord,
    Result,
    State,
    parse_name,
)
from nexus.common.operations._store import RETENTION_S, Change, OperationStore
from nexus.common.paging import page_request, paginate

log = logging.getLogger(__name__)

STREAM = Stream("OPERATIONS", ("nexus.operations.>",), max_age_s=RETENTION_S, max_bytes=GIB)
"""Queued work of every service (`OperationQueued`), kept as long as the operations are."""
MAX_REQUEST_BYTES = MIB - 16 * 1024
"""Largest request an operation queues (one NATS message, with room for its headers)."""
RETRYABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.ABORTED, ErrorCode.DEADLINE_EXCEEDED})
"""Errors another attempt may not meet; any other NexusError ends the operation at once."""
INTERNAL = "INTERNAL"
CANCELLED = "CANCELLED"

_RUNNING = "operation:"
"""The idempotent call an operation's work runs as: this, then the operation's name."""


def current_operation() -> str:
    """The name of the operation whose work runs in this context; "" outside one (so an event
    that announces what the work made can name the operation that made it)."""
    call = idempotent_call()
    return call.removeprefix(_RUNNING) if call.startswith(_RUNNING) else ""


Req = TypeVar("Req", bound=Message)
Res = TypeVar("Res", bound=Message)


@dataclass(frozen=True)
class OperationKind(Generic[Req, Res]):
    """A kind of long work a service runs as operations.

    Attributes:
        name: Its name ("train_detector"): a NATS subject token.
        request_type: The request it runs on.
        work: Runs it: the request and where to report progress; returns the result. It calls
            `progress.stage` between its steps (where cancellation takes effect) and must be
            idempotent as a call (`nexus.common.idempotency`): run again after a replica died,
            it finds what its first run made.
    """

    name: str
    request_type: type[Req]
    work: Callable[[Req, Progress], Awaitable[Res]]


@dataclass(frozen=True)
class OperationsConfig:
    """How a service runs its operations.

    Attributes:
        workers: Operations one replica runs at once.
        max_attempts: Attempts an operation gets before it fails.
        ack_wait_s: Silence after which the work of a replica that died goes to another.
    """

    workers: int = 1
    max_attempts: int = 3
    ack_wait_s: float = 30.0

    @property
    def heartbeat_s(self) -> float:
        """How often a running operation's record shows it is alive."""
        return self.ack_wait_s / 3

    @property
    def stale_s(self) -> float:
        """Heartbeat silence after which the sweeper takes a running operation back."""
        return 2 * self.ack_wait_s


class Operations:
    """The long-running operations of one service.

    Args:
        bus: The service's event bus.
        service: The service's name (the first segment of its operations' names).
        kinds: The kinds of work it runs.
        config: Workers, attempts, ack wait.
    """

    def __init__(
        self,
        bus: EventBus,
        service: str,
        kinds: Iterable[OperationKind[Any, Any]],
        config: OperationsConfig | None = None,
    ) -> None:
        self._bus = bus
        self._service = check_name(service, "service")
        self._kinds = {check_name(kind.name, "kind"): kind for kind in kinds}
        self.config = config or OperationsConfig()
        self.store = OperationStore(bus.nc, self._service)
        self._consumers: list[Consumer] = []
        self._running: dict[str, Tracker] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self.store.on_change(self._follow_cancel)

    @property
    def service(self) -> str:
        """The service whose operations these are."""
        return self._service

    async def start(self) -> None:
        """Opens the bucket and the queue, and starts the workers and the sweeper (none for a
        service that has no kinds: it only answers that it has no operations)."""
        await self.store.start()
        if not self._kinds:
            return
        await self._bus.ensure_streams(STREAM)
        for _ in range(self.config.workers):
            self._consumers.append(await self._consume())
        self._sweeper = asyncio.create_task(self._sweep_forever(), name=f"ops-{self._service}")

    async def _consume(self) -> Consumer:
        return await self._bus.consume(
            f"nexus.operations.{self._service}.>",
            events_pb2.OperationQueued,
            self._handle,
            durable=f"operations-{self._service}",
            stream=STREAM.name,
            batch=1,
            # The attempts are counted in the record; past them the handler ends the operation.
            # Two more deliveries than attempts keep the consumer from dead-lettering first.
            max_deliver=self.config.max_attempts + 2,
            ack_wait_s=self.config.ack_wait_s,
            prefetch=False,
        )

    async def stop(self) -> None:
        """Stops taking work; what runs gets the consumers' grace, then goes back to the queue."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await asyncio.gather(*(consumer.stop() for consumer in self._consumers))
        await self.store.stop()

    # Starting and reading.

    async def submit(self, kind: str, request: Message) -> OperationRecord:
        """Starts an operation: stored QUEUED, its request queued for a worker.

        Inside an idempotent call, the id derives from the call, so the call run again gets the
        operation its first run started (queued again only if it never left the queue).

        Raises:
            InvalidArgument: An unknown kind, or a request of another type.
            ResourceExhausted: A request larger than one queued message.
            Unavailable: NATS does not answer (the operation is then FAILED, if stored).
        """
        work = self._kind(kind)
        if not isinstance(request, work.request_type):
            raise InvalidArgument(f"{kind} runs on {work.request_type.__name__}")
        packed = any_pb2.Any()
        packed.Pack(request)
        if (size := packed.ByteSize()) > MAX_REQUEST_BYTES:
            raise ResourceExhausted.too_large("the request (bytes)", size, MAX_REQUEST_BYTES)
        now = time.time()
        record = OperationRecord(
            service=self._service,
            id=new_id("operation"),
            kind=kind,
            state=State.QUEUED,
            created=now,
            updated=now,
            max_attempts=self.config.max_attempts,
        )
        record, created = await self.store.create(record)
        if created or (record.state is State.QUEUED and record.attempt == 0):
            await self._queue(record, packed)
        return record

    async def _queue(self, record: OperationRecord, request: any_pb2.Any) -> None:
        queued = events_pb2.OperationQueued(name=record.name, kind=record.kind, request=request)
        subject = f"nexus.operations.{self._service}.{record.kind}"
        try:
            await self._bus.publish(subject, queued, event_id=record.id, subject_hint=record.name)
        except NexusError as err:
            failure = Failure(err.code.value, f"could not queue the work: {err.message}")
            await self.store.update(record.id, _fail_if_queued(failure))
            raise

    async def get(self, name: str) -> OperationRecord:
        """One operation, as stored now.

        Raises:
            InvalidArgument: A name that is not an operation's, or of another service.
            NotFound: No such operation.
        """
        return (await self.store.get(self._own(name))).record

    async def list_operations(
        self,
        *,
        state: State | None = None,
        kind: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[OperationRecord], str]:
        """One page of the service's operations, oldest first, filtered by state and kind.

        Raises:
            InvalidArgument: A bad page size or token.
        """
        scope = f"operations/{self._service}/{state.value if state else ''}/{kind}"
        page = page_request(page_size, page_token, scope=scope)
        records = [
            record
            for record in await self.store.records()
            if (state is None or record.state is state) and (not kind or record.kind == kind)
        ]
        return paginate(records, lambda record: record.order, page)

    async def cancel(self, name: str) -> OperationRecord:
        """Cancels a queued operation at once, a running one at its next step (it is then
        marked `cancel_requested`); a finished one is answered as it is.

        Raises:
            InvalidArgument, NotFound: As `get`.
        """
        return await self.store.update(self._own(name), _cancel(time.time()))

    async def watch(self, name: str) -> AsyncIterator[OperationRecord]:
        """The operation now, then each change until it is done.

        Raises:
            InvalidArgument, NotFound: As `get`.
        """
        async for record in self.store.watch(self._own(name)):
            yield record

    def _own(self, name: str) -> str:
        service, operation_id = parse_name(name)
        if service != self._service:
            raise InvalidArgument.for_field(
                "name", f"this is the {self._service} service, not {service!r}"
            )
        return operation_id

    def _kind(self, kind: str) -> OperationKind[Any, Any]:
        work = self._kinds.get(kind)
        if work is None:
            known = ", ".join(sorted(self._kinds)) or "none"
            raise InvalidArgument.for_field("kind", f"unknown kind {kind!r} (known: {known})")
        return work

    # Running.

    async def _handle(self, event: Event[events_pb2.OperationQueued]) -> None:
        """Runs one queued operation (an attempt), unless it is done or cancelled already."""
        _, operation_id = parse_name(event.data.name)
        runner = secrets.token_hex(8)
        try:
            record = await self.store.update(operation_id, _begin(runner, time.time()))
        except NotFound:  # expired from the bucket: nothing left to report to
            log.warning("operation %s is gone; its queued work is dropped", event.data.name)
            return
        if record.state is State.RUNNING and record.runner == runner:
            await self._attempt(record, event.data.request)

    async def _attempt(self, record: OperationRecord, request: any_pb2.Any) -> None:
        tracker = Tracker(lambda snapshot: self._beat(record, snapshot))
        self._running[record.id] = tracker
        beating = asyncio.create_task(self._heartbeat(tracker))
        try:
            result = await self._run(record, request, tracker)
        except asyncio.CancelledError:
            if self._stopping:  # a graceful stop: the attempt did not fail, another replica runs it
                await _quietly(self.store.update(record.id, _requeue(record.runner)))
            raise
        except Exception as err:
            await self._failed(record, err)
        else:
            end = _end(record.runner, result, time.time(), tracker.snapshot)
            stored = await self.store.update(record.id, end)
            if stored.runner != record.runner and not stored.done:
                # Taken back (its heartbeat could not be stored for too long): the message must
                # come back for the attempt that now owns the operation.
                raise Aborted(f"{record.name}: attempt {record.attempt} lost its hold")
        finally:
            beating.cancel()
            self._running.pop(record.id, None)

    async def _run(
        self, record: OperationRecord, request: any_pb2.Any, tracker: Tracker
    ) -> Result | Failure:
        """The work's result; a Failure when it was cancelled."""
        kind = self._kind(record.kind)
        message = kind.request_type()
        if not request.Unpack(message):
            raise InvalidArgument(f"queued {request.type_url}, {kind.name} runs on another type")
        try:
            with running_as(f"{_RUNNING}{record.name}"):
                reply = await kind.work(message, tracker)
        except OperationCancelled:
            return Failure(CANCELLED, "cancelled")
        packed = any_pb2.Any()
        packed.Pack(reply)
        return Result(packed.type_url, packed.value)

    async def _failed(self, record: OperationRecord, err: Exception) -> None:
        """Ends the operation FAILED, or queues it again (raising, so the message comes back
        after a delay) when the error may pass and attempts are left."""
        retryable = not isinstance(err, NexusError) or err.code in RETRYABLE
        failure = _failure(err)
        if retryable and record.attempt < record.max_attempts:
            await self.store.update(record.id, _retry(record.runner, failure))
            raise err
        if not isinstance(err, NexusError):
            log.error("operation %s failed", record.name, exc_info=err)
        await self.store.update(record.id, _end(record.runner, failure, time.time()))

    async def _beat(self, record: OperationRecord, snapshot: Snapshot) -> None:
        """Stores the attempt's progress and heartbeat; a lost hold (another replica took the
        operation over) or a cancel stops the work at its next step."""
        stored = await self.store.update(record.id, _progress(record.runner, snapshot))
        tracker = self._running.get(record.id)
        if tracker is not None and (stored.runner != record.runner or stored.cancel_requested):
            tracker.cancel()

    async def _heartbeat(self, tracker: Tracker) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            with contextlib.suppress(NexusError):
                await tracker.flush()

    def _follow_cancel(self, record: OperationRecord) -> None:
        """A cancel asked of any replica reaches the one running the operation within ms."""
        if record.cancel_requested and (tracker := self._running.get(record.id)) is not None:
            tracker.cancel()

    # Sweeping.

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self.sweep(time.time())
            except NexusError as err:
                log.warning("operations sweep of %s failed: %s", self._service, err)

    async def sweep(self, now: float) -> list[OperationRecord]:
        """Takes back the running operations whose heartbeat stopped for `stale_s` (queued
        again, or ended when out of attempts or cancelled) and fails those queued longer than
        the queue keeps work. Every replica sweeps; compare-and-set makes one change count.

        Returns:
            The records it changed.
        """
        changed: list[OperationRecord] = []
        for record in self.store.mirrored():
            change = _stale(now, self.config.stale_s)
            if change(record) is not None:
                changed.append(await self.store.update(record.id, change))
        return changed


# Record changes: each gets the latest record and returns the next one (None: no change).


def _begin(runner: str, now: float) -> Change:
    def change(record: OperationRecord) -> OperationRecord | None:
        if record.done:
            return None
        if record.cancel_requested:
            return record.finished(State.CANCELLED, now, error=Failure(CANCELLED, "cancelled"))
        if record.attempt >= record.max_attempts:
            why = record.error.message if record.error else "its replicas stopped"
            why = f"gave up after {record.attempt} attempts: {why}"
            failure = Failure(ErrorCode.ABORTED.value, why)
            return record.finished(State.FAILED, now, error=failure)
        return replace(
            record,
            state=State.RUNNING,
            attempt=record.attempt + 1,
            runner=runner,
            started=now,
            updated=now,
            error=None,
        )

    return change


def _progress(runner: str, snapshot: Snapshot) -> Change:
    def change(record: OperationRecord) -> OperationRecord | None:
        if record.runner != runner or record.state is not State.RUNNING:
            return None
        return replace(
            record,
            updated=time.time(),
            stage=snapshot.stage,
            percent=snapshot.percent,
            metrics=dict(snapshot.metrics),
            eta_s=snapshot.eta_s,
            message=snapshot.message,
        )

    return change


def _end(
    runner: str, outcome: Result | Failure, now: float, snapshot: Snapshot | None = None
) -> Change:
    def change(record: OperationRecord) -> OperationRecord | None:
        if record.runner != runner or record.done:
            return None
        if snapshot is not None:  # what the work reported last, not stored yet
            record = replace(record, stage=snapshot.stage, metrics=dict(snapshot.metrics))
        if isinstance(outcome, Result):
            return record.finished(State.SUCCEEDED, now, result=outcome, percent=100.0)
        state = State.CANCELLED if outcome.code == CANCELLED else State.FAILED
        return record.finished(state, now, error=outcome)

    return change


def _retry(runner: str, failure: Failure) -> Change:
    def change(record: OperationRecord) -> OperationRecord | None:
        if record.runner != runner or record.done:
            return None
        message = f"attempt {record.attempt} failed; queued again"
        return replace(record, state=State.QUEUED, runner="", error=failure, message=message)

    return change


def _requeue(runner: str) -> Change:
    def change(record: OperationRecord) -> OperationRecord | None:
        if record.runner != runner or record.done:
            return None
        attempt = record.attempt - 1  # stopped, not failed: the attempt does not count
        message = "its replica stopped; queued again"
        return replace(record, state=State.QUEUED, runner="", attempt=attempt, message=message)

    return change


def _cancel(now: float) -> Change:
    def change(record: OperationRecord) -> OperationRecord | None:
        if record.done or record.cancel_requested:
            return None
        if record.state is State.QUEUED:
            return record.finished(State.CANCELLED, now, error=Failure(CANCELLED, "cancelled"))
        return replace(record, cancel_requested=True)

    return change


def _fail_if_queued(failure: Failure) -> Change:
    def change(record: OperationRecord) -> OperationRecord | None:
        if record.state is not State.QUEUED or record.attempt:
            return None
        return record.finished(State.FAILED, time.time(), error=failure)

    return change


def _stale(now: float, stale_s: float) -> Change:
    def change(record: OperationRecord) -> OperationRecord | None:
        if record.state is State.QUEUED and now - record.created > RETENTION_S:
            failure = Failure(ErrorCode.DEADLINE_EXCEEDED.value, "not run before its queue expired")
            return record.finished(State.FAILED, now, error=failure)
        if record.state is not State.RUNNING or now - record.updated <= stale_s:
            return None
        lost = f"attempt {record.attempt} stopped (no heartbeat for {now - record.updated:.0f} s)"
        if record.cancel_requested:
            return record.finished(State.CANCELLED, now, error=Failure(CANCELLED, "cancelled"))
        if record.attempt >= record.max_attempts:
            failure = Failure(ErrorCode.ABORTED.value, f"gave up: {lost}")
            return record.finished(State.FAILED, now, error=failure)
        message = f"{lost}; queued again"
        return replace(record, state=State.QUEUED, runner="", updated=now, message=message)

    return change


def _failure(err: Exception) -> Failure:
    """What a client may read of an error: a NexusError's code and message, never the details
    of an unexpected exception."""
    if isinstance(err, NexusError):
        return Failure(err.code.value, err.message)
    return Failure(INTERNAL, "internal error")


async def _quietly(update: Awaitable[Any]) -> None:
    with contextlib.suppress(NexusError):
        await update
