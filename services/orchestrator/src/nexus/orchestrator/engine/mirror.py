"""What one replica knows of the runs: each run's latest record among this replica's own writes,
the views every replica publishes (`store`, ADR 0056) and, while a run is watched here, its
writes read from the runs' bucket. Records are ordered by their revision in the runs' bucket,
so a later view never hides a newer record, and a record is decoded only when read (a run
advanced step after step between two reads is decoded once)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nexus.common.kv import Versioned
from nexus.orchestrator.engine.records import RunRecord

Decode = Callable[[bytes], RunRecord]


class RunMirror:
    """Runs by id, each at the highest revision seen, with per-run change feeds.

    Args:
        decode: A stored value -> its record.
    """

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._records: dict[str, RunRecord] = {}
        self._undecoded: dict[str, bytes] = {}
        self._revisions: dict[str, int] = {}
        self._watchers: dict[str, set[asyncio.Queue[Versioned[RunRecord] | None]]] = {}

    def revision(self, run_id: str) -> int:
        """The revision of the record held (-1: none)."""
        return self._revisions.get(run_id, -1)

    def put(self, run_id: str, record: RunRecord, revision: int) -> None:
        """Holds `record` unless a newer one is held; tells the run's watchers."""
        if revision <= self.revision(run_id):
            return
        self._revisions[run_id] = revision
        self._undecoded.pop(run_id, None)
        self._records[run_id] = record
        for queue in self._watchers.get(run_id, ()):
            queue.put_nowait(Versioned(record, revision))

    def put_raw(self, run_id: str, raw: bytes, revision: int) -> None:
        """`put` of a stored value, decoded when read (at once when the run is watched)."""
        if revision <= self.revision(run_id):
            return
        if run_id in self._watchers:
            self.put(run_id, self._decode(raw), revision)
            return
        self._revisions[run_id] = revision
        self._records.pop(run_id, None)
        self._undecoded[run_id] = raw

    def peek(self, run_id: str) -> RunRecord | None:
        raw = self._undecoded.pop(run_id, None)
        if raw is not None:
            self._records[run_id] = self._decode(raw)
        return self._records.get(run_id)

    def records(self) -> list[RunRecord]:
        for run_id, raw in self._undecoded.items():
            self._records[run_id] = self._decode(raw)
        self._undecoded.clear()
        return list(self._records.values())

    def close(self) -> None:
        """Ends every watch."""
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(None)

    @contextmanager
    def watching(self, run_id: str) -> Iterator[asyncio.Queue[Versioned[RunRecord] | None]]:
        """A queue of every newer record of the run held from now on; None once closed."""
        queue: asyncio.Queue[Versioned[RunRecord] | None] = asyncio.Queue()
        self._watchers.setdefault(run_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._watchers.get(run_id, set())
            queues.discard(queue)
            if not queues:
                self._watchers.pop(run_id, None)
