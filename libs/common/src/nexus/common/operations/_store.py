"""Operations in a JetStream KV bucket, mirrored in memory by every replica of their service.

Key `<service>.<id>`, a JSON record per operation (`OperationRecord`). Every change is a
compare-and-set (`nexus.common.kv.update_entry`), so a cancel, a heartbeat and a replica that
takes the work over never overwrite each other. The mirror (`nexus.common.kv.KvRecords`)
serves lists and
the change feeds that watches and the runner's cancellations follow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from nats.aio.client import Client
from nats.js import api

from nexus.common.errors import NotFound
from nexus.common.events import DAY_S, MIB
from nexus.common.kv import KvRecords, Versioned
from nexus.common.operations._records import OperationRecord, kv_key, operation_name

BUCKET = "nexus_operations"
RETENTION_S = 7 * DAY_S
"""How long an operation is kept (the bucket's TTL, the queue stream's max age)."""
MAX_RECORD_BYTES = MIB

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


class OperationStore:
    """The operations of one service.

    Args:
        nc: The NATS connection.
        service: The service whose operations these are.
    """

    def __init__(self, nc: Client, service: str) -> None:
        self._service = service
        self._records = KvRecords(nc, _CONFIG, OperationRecord.decode, keys=f"{service}.>")

    def on_change(self, listener: Listener) -> None:
        """Calls `listener` with every record the mirror applies (on the event loop)."""
        self._records.on_change(listener)

    async def start(self) -> None:
        """Opens the bucket and loads the mirror.

        Raises:
            Unavailable: When NATS does not answer.
        """
        await self._records.start()

    async def stop(self) -> None:
        """Stops following; open watches end."""
        await self._records.stop()

    async def create(self, record: OperationRecord) -> tuple[OperationRecord, bool]:
        """Stores a new operation; when its id exists (the same idempotent call started it
        before), the stored one.

        Returns:
            The record stored, and whether this call created it.
        """
        stored = await self.update(record.id, lambda current: None, missing=record)
        return stored, stored == record

    async def get(self, operation_id: str) -> Versioned[OperationRecord]:
        """The operation as stored now.

        Raises:
            NotFound: No such operation (or it expired).
        """
        found = await self._records.get(kv_key(self._service, operation_id), "read an operation")
        if found is None:
            raise NotFound(f"operation {operation_name(self._service, operation_id)} not found")
        return found

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

        key = kv_key(self._service, operation_id)
        stored = await self._records.update(key, encoded, "update an operation")
        if stored is None:
            raise NotFound(f"operation {operation_name(self._service, operation_id)} not found")
        return stored

    async def records(self) -> list[OperationRecord]:
        """Every operation of the service, as every replica wrote it so far, oldest first."""
        return sorted(await self._records.synced("list operations"), key=_order)

    def mirrored(self) -> list[OperationRecord]:
        """What the mirror holds now, oldest first."""
        return sorted(self._records.mirrored(), key=_order)

    async def watch(self, operation_id: str) -> AsyncIterator[OperationRecord]:
        """The operation as it is now, then each change, until it is done (or expires).

        Raises:
            NotFound: No such operation.
        """
        with self._records.watching(kv_key(self._service, operation_id)) as changes:
            current = await self.get(operation_id)
            yield current.record
            while not current.record.done:
                change = await changes.get()
                if change is None:
                    return
                if change.revision > current.revision:
                    current = change
                    yield current.record


def _order(record: OperationRecord) -> str:
    return record.order
