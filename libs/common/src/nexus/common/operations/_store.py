"""Operations in a JetStream KV bucket, mirrored in memory by every replica of their service.

Key `<service>.<id>`, a JSON record per operation (`OperationRecord`). Every change is a
compare-and-set (`nexus.common.kv.update_entry`), so a cancel, a heartbeat and a replica that
takes the work over never overwrite each other. The mirror (a `KvFollower`) serves lists and
the change feeds that watches and the runner's cancellations follow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import api
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nexus.common.errors import NotFound
from nexus.common.events import DAY_S, MIB
from nexus.common.kv import KvEntry, KvFollower, nats_unavailable, open_key_value, update_entry
from nexus.common.operations._records import OperationRecord, kv_key, operation_name

log = logging.getLogger(__name__)

BUCKET = "nexus_operations"
RETENTION_S = 7 * DAY_S
"""How long an operation is kept (the bucket's TTL, the queue stream's max age)."""
MAX_RECORD_BYTES = MIB
_SYNC_TIMEOUT_S = 5.0

_CONFIG = api.KeyValueConfig(
    bucket=BUCKET,
    description="Nexus long-running operations of every service: state, progress, result",
    history=1,
    ttl=RETENTION_S,
    max_value_size=MAX_RECORD_BYTES,
    storage=api.StorageType.FILE,
)

Change = Callable[[OperationRecord], OperationRecord | None]
"""The operation's next record given its latest one; None: leave it as it is."""
Listener = Callable[[OperationRecord], None]


@dataclass(frozen=True)
class Versioned:
    """A record and its KV revision (which orders every change of the bucket)."""

    record: OperationRecord
    revision: int


class OperationStore:
    """The operations of one service.

    Args:
        nc: The NATS connection.
        service: The service whose operations these are.
    """

    def __init__(self, nc: Client, service: str) -> None:
        self._nc = nc
        self._service = service
        self._kv: KeyValue | None = None
        self._follower: KvFollower | None = None
        self._mirror: dict[str, OperationRecord] = {}
        self._watchers: dict[str, set[asyncio.Queue[Versioned | None]]] = {}
        self._listeners: list[Listener] = []

    @property
    def kv(self) -> KeyValue:
        """The bucket (after `start`)."""
        assert self._kv is not None, "start() first"
        return self._kv

    def on_change(self, listener: Listener) -> None:
        """Calls `listener` with every record the mirror applies (on the event loop)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Opens the bucket and loads the mirror.

        Raises:
            Unavailable: When NATS does not answer.
        """
        with nats_unavailable("open the operations bucket"):
            self._kv = await open_key_value(self._nc.jetstream(), _CONFIG)
        follower = KvFollower(self._nc, BUCKET, self._apply, keys=f"{self._service}.>")
        await follower.start()
        self._follower = follower

    async def stop(self) -> None:
        """Stops following; open watches end."""
        if self._follower is not None:
            await self._follower.stop()
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(None)

    async def create(self, record: OperationRecord) -> tuple[OperationRecord, bool]:
        """Stores a new operation; when its id exists (the same idempotent call started it
        before), the stored one.

        Returns:
            The record stored, and whether this call created it.
        """
        stored = await self.update(record.id, lambda current: None, missing=record)
        return stored, stored == record

    async def get(self, operation_id: str) -> Versioned:
        """The operation as stored now.

        Raises:
            NotFound: No such operation (or it expired).
        """
        with nats_unavailable("read an operation"):
            try:
                entry = await self.kv.get(kv_key(self._service, operation_id))
            except KeyNotFoundError:
                entry = None
        if entry is None or not entry.value:
            raise NotFound(f"operation {operation_name(self._service, operation_id)} not found")
        return Versioned(OperationRecord.decode(entry.value), entry.revision or 0)

    async def update(
        self, operation_id: str, change: Change, *, missing: OperationRecord | None = None
    ) -> OperationRecord:
        """Applies `change` to the latest record with compare-and-set (again on a conflict).

        Args:
            operation_id: The operation.
            change: Its next record given the latest; None writes nothing.
            missing: The record to create when there is none (else NotFound).

        Returns:
            The record now stored.

        Raises:
            NotFound: No such operation, and no `missing` record.
            Aborted: Too many concurrent changes.
            Unavailable: NATS does not answer.
        """

        def encoded(raw: bytes | None) -> bytes | None:
            if raw is None:
                return missing.encode() if missing is not None else None
            record = change(OperationRecord.decode(raw))
            return record.encode() if record is not None else None

        with nats_unavailable("update an operation"):
            raw, _ = await update_entry(self.kv, kv_key(self._service, operation_id), encoded)
        if raw is None:
            raise NotFound(f"operation {operation_name(self._service, operation_id)} not found")
        return OperationRecord.decode(raw)

    async def records(self) -> list[OperationRecord]:
        """Every operation of the service, as every replica wrote it so far, oldest first."""
        if self._follower is not None:
            with nats_unavailable("list operations"):
                await self._follower.sync(_SYNC_TIMEOUT_S)
        return self.mirrored()

    def mirrored(self) -> list[OperationRecord]:
        """What the mirror holds now, oldest first."""
        return sorted(self._mirror.values(), key=lambda record: record.order)

    async def watch(self, operation_id: str) -> AsyncIterator[OperationRecord]:
        """The operation as it is now, then each change, until it is done (or expires).

        Raises:
            NotFound: No such operation.
        """
        with self._watching(operation_id) as changes:
            current = await self.get(operation_id)
            yield current.record
            last = current.revision
            while not current.record.done:
                change = await changes.get()
                if change is None:
                    return
                if change.revision > last:
                    current, last = change, change.revision
                    yield current.record

    @contextmanager
    def _watching(self, operation_id: str) -> Iterator[asyncio.Queue[Versioned | None]]:
        queue: asyncio.Queue[Versioned | None] = asyncio.Queue()
        self._watchers.setdefault(operation_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._watchers.get(operation_id, set())
            queues.discard(queue)
            if not queues:
                self._watchers.pop(operation_id, None)

    async def _apply(self, entry: KvEntry) -> None:
        operation_id = entry.key.removeprefix(f"{self._service}.")
        if entry.removed or not entry.value:
            self._mirror.pop(operation_id, None)
            self._notify(operation_id, None)
            return
        record = OperationRecord.decode(entry.value)
        self._mirror[operation_id] = record
        self._notify(operation_id, Versioned(record, entry.revision))
        for listener in self._listeners:
            listener(record)

    def _notify(self, operation_id: str, change: Versioned | None) -> None:
        for queue in self._watchers.get(operation_id, ()):
            queue.put_nowait(change)
