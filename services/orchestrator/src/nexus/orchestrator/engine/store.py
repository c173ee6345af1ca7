"""Runs in KV `nexus_orchestrator_runs`, mirrored in memory by every replica.

Every change is a compare-and-set (`nexus.common.kv.update_entry`): a replica advancing a run,
a cancel and a signal never overwrite each other. The mirror (a `KvFollower`) serves lists,
watches and the timers every replica keeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

from nats.aio.client import Client
from nats.js import api
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nexus.common.errors import NotFound
from nexus.common.events import DAY_S, MIB
from nexus.common.kv import KvEntry, KvFollower, nats_unavailable, open_key_value, update_entry
from nexus.orchestrator.engine.records import RunRecord

BUCKET = "nexus_orchestrator_runs"
RETENTION_S = 30 * DAY_S
_SYNC_TIMEOUT_S = 5.0
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
        self._nc = nc
        self._kv: KeyValue | None = None
        self._follower: KvFollower | None = None
        self._mirror: dict[str, RunRecord] = {}
        self._watchers: dict[str, set[asyncio.Queue[RunRecord | None]]] = {}

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv

    async def start(self) -> None:
        """Opens the bucket and loads the mirror.

        Raises:
            Unavailable: NATS does not answer.
        """
        with nats_unavailable("open the runs bucket"):
            self._kv = await open_key_value(self._nc.jetstream(), _CONFIG)
        follower = KvFollower(self._nc, BUCKET, self._apply)
        await follower.start()
        self._follower = follower

    async def stop(self) -> None:
        """Stops following; open watches end."""
        if self._follower is not None:
            await self._follower.stop()
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(None)

    async def create(self, record: RunRecord) -> RunRecord:
        """Stores a new run (a run of that id already stored is returned as it is)."""
        return await self.update(record.run_id, lambda current: None, missing=record)

    async def get(self, run_id: str) -> RunRecord:
        """The run as stored now.

        Raises:
            NotFound: No such run.
        """
        with nats_unavailable("read a run"):
            try:
                entry = await self.kv.get(run_id) if _valid(run_id) else None
            except KeyNotFoundError:
                entry = None
        if entry is None or not entry.value:
            raise NotFound(f"run {run_id!r} not found")
        return RunRecord.decode(entry.value)

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

        with nats_unavailable("update a run"):
            raw, _ = await update_entry(self.kv, run_id, encoded) if _valid(run_id) else (None, 0)
        if raw is None:
            raise NotFound(f"run {run_id!r} not found")
        return RunRecord.decode(raw)

    async def records(self) -> list[RunRecord]:
        """Every run, as every replica wrote it so far, newest first."""
        if self._follower is not None:
            with nats_unavailable("list runs"):
                await self._follower.sync(_SYNC_TIMEOUT_S)
        return self.mirrored()

    def mirrored(self) -> list[RunRecord]:
        """What the mirror holds now, newest first."""
        return sorted(self._mirror.values(), key=lambda r: (-r.created, r.run_id))

    def due(self, now: float) -> list[RunRecord]:
        """The live runs whose `wake_at` passed, as the mirror holds them."""
        return [r for r in self._mirror.values() if not r.done and 0 < r.wake_at <= now]

    async def watch(self, run_id: str) -> AsyncIterator[RunRecord]:
        """The run as it is now, then each change, until it is done.

        Raises:
            NotFound: No such run.
        """
        with self._watching(run_id) as changes:
            current = await self.get(run_id)
            yield current
            while not current.done:
                change = await changes.get()
                if change is None:
                    return
                if change.updated >= current.updated and change != current:
                    current = change
                    yield current

    @contextmanager
    def _watching(self, run_id: str) -> Iterator[asyncio.Queue[RunRecord | None]]:
        queue: asyncio.Queue[RunRecord | None] = asyncio.Queue()
        self._watchers.setdefault(run_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._watchers.get(run_id, set())
            queues.discard(queue)
            if not queues:
                self._watchers.pop(run_id, None)

    async def _apply(self, entry: KvEntry) -> None:
        if entry.removed or not entry.value:
            self._mirror.pop(entry.key, None)
            return
        record = RunRecord.decode(entry.value)
        self._mirror[entry.key] = record
        for queue in self._watchers.get(entry.key, ()):
            queue.put_nowait(record)


def _valid(run_id: str) -> bool:
    return bool(run_id) and len(run_id) <= 64 and all(c.isalnum() or c in "-_" for c in run_id)
