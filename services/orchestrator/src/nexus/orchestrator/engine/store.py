"""Runs in KV `nexus_orchestrator_runs`, mirrored in memory by every replica.

Every change is a compare-and-set (`nexus.common.kv.update_entry`): a replica advancing a run,
a cancel and a signal never overwrite each other. The mirror (`nexus.common.kv.KvRecords`)
serves lists,
watches and the timers every replica keeps.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from nats.aio.client import Client
from nats.js import api

from nexus.common.errors import NotFound
from nexus.common.events import DAY_S, MIB
from nexus.common.kv import KvRecords
from nexus.orchestrator.engine.records import RunRecord

BUCKET = "nexus_orchestrator_runs"
RETENTION_S = 30 * DAY_S
_CONFIG = api.KeyValueConfig(
    bucket=BUCKET,
    description="Nexus orchestrator: runs, their state and history",
    history=1,
    ttl=RETENTION_S,
    max_value_size=MIB,
    storage=api.StorageType.FILE,
)

Change = Callable[[RunRecord], RunRecord | None]
"""The run's next record given its latest; None: leave it as it is."""


class RunStore:
    """Every run of the deployment.

    Args:
        nc: The NATS connection.
    """

    def __init__(self, nc: Client) -> None:
        self._records = KvRecords(nc, _CONFIG, RunRecord.decode)

    async def start(self) -> None:
        """Opens the bucket and loads the mirror.

        Raises:
            Unavailable: NATS does not answer.
        """
        await self._records.start()

    async def stop(self) -> None:
        """Stops following; open watches end."""
        await self._records.stop()

    async def create(self, record: RunRecord) -> RunRecord:
        """Stores a new run (a run of that id already stored is returned as it is)."""
        return await self.update(record.run_id, lambda current: None, missing=record)

    async def get(self, run_id: str) -> RunRecord:
        """The run as stored now.

        Raises:
            NotFound: No such run.
        """
        found = await self._records.get(run_id, "read a run") if _valid(run_id) else None
        if found is None:
            raise NotFound(f"run {run_id!r} not found")
        return found.record

    async def update(
        self, run_id: str, change: Change, *, missing: RunRecord | None = None
    ) -> RunRecord:
        """Applies `change` to the latest record with compare-and-set; sets `updated`.

        Raises:
            NotFound: No such run and no `missing` record.
            Aborted: Too many concurrent changes.
            Unavailable: NATS does not answer.
        """

        def encoded(raw: bytes | None) -> bytes | None:
            if raw is None:
                return missing.encode() if missing is not None else None
            record = change(RunRecord.decode(raw))
            if record is None:
                return None
            return RunRecord(**{**record.__dict__, "updated": time.time()}).encode()

        stored = (
            await self._records.update(run_id, encoded, "update a run") if _valid(run_id) else None
        )
        if stored is None:
            raise NotFound(f"run {run_id!r} not found")
        return stored

    async def records(self) -> list[RunRecord]:
        """Every run, as every replica wrote it so far, newest first."""
        return sorted(await self._records.synced("list runs"), key=_newest_first)

    def mirrored(self) -> list[RunRecord]:
        """What the mirror holds now, newest first."""
        return sorted(self._records.mirrored(), key=_newest_first)

    def due(self, now: float) -> list[RunRecord]:
        """The live runs whose `wake_at` passed, as the mirror holds them."""
        return [r for r in self._records.mirrored() if not r.done and 0 < r.wake_at <= now]

    async def watch(self, run_id: str) -> AsyncIterator[RunRecord]:
        """The run as it is now, then each change, until it is done.

        Raises:
            NotFound: No such run.
        """
        with self._records.watching(run_id) as changes:
            current = await self.get(run_id)
            yield current
            while not current.done:
                change = await changes.get()
                if change is None:
                    return
                if change.record.updated >= current.updated and change.record != current:
                    current = change.record
                    yield current


def _newest_first(run: RunRecord) -> tuple[float, str]:
    return (-run.created, run.run_id)


def _valid(run_id: str) -> bool:
    return bool(run_id) and len(run_id) <= 64 and all(c.isalnum() or c in "-_" for c in run_id)
