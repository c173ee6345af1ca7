"""Runs in KV `nexus_orchestrator_runs`, mirrored in memory by every replica.

Every change is a compare-and-set (`nexus.common.kv.update_entry`): a replica advancing a run,
a cancel and a signal never overwrite each other. The mirror (`nexus.common.kv.KvRecords`)
serves lists, watches and the timers every replica keeps.

A run's record is rewritten at each step, so it must not grow with the run: once `SEAL_STEPS`
finished executions lead its history, they are stored as one chunk in KV
`nexus_orchestrator_history` (key `<run>.<first index>.<count>`, written once, never changed)
and dropped from the record, which keeps their count in `seals`. Readers that need the whole
history (expressions over `steps`, the history API) read it `expanded`; chunks are immutable,
so every replica keeps those it read.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from nats.aio.client import Client
from nats.js import api
from nats.js.kv import KeyValue

from nexus.common.errors import NotFound
from nexus.common.events import DAY_S, MIB
from nexus.common.kv import KvRecords, nats_unavailable, open_key_value
from nexus.orchestrator.engine.records import (
    RunRecord,
    StepRecord,
    decode_steps,
    encode_steps,
    replace,
)

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

HISTORY_BUCKET = "nexus_orchestrator_history"
_HISTORY_CONFIG = api.KeyValueConfig(
    bucket=HISTORY_BUCKET,
    description="Nexus orchestrator: sealed chunks of the runs' histories",
    history=1,
    ttl=RETENTION_S,
    max_value_size=MIB,
    storage=api.StorageType.FILE,
)
MIRROR_GATHER_S = 0.02
"""How long each replica's mirror of the runs lets their writes gather between batches: every
replica receives every write of every run, one a step; handled in batches, one wake-up serves
several (ADR 0053). Watches of a run see this replica's own writes at once; lists and the
writes of other replicas' runs come up to this much later."""
SEAL_STEPS = 16
"""Finished executions at the head of a record's history that are sealed into one chunk."""
_KEEP_CHUNKS = 4096

Change = Callable[[RunRecord], RunRecord | None]
"""The run's next record given its latest; None: leave it as it is."""


class RunStore:
    """Every run of the deployment.

    Args:
        nc: The NATS connection.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._codec = _Codec()
        self._records = KvRecords(nc, _CONFIG, self._codec.decode, gather_s=MIRROR_GATHER_S)
        self._chunks: KeyValue | None = None
        self._read: OrderedDict[str, tuple[StepRecord, ...]] = OrderedDict()

    async def start(self) -> None:
        """Opens the buckets and loads the mirror.

        Raises:
            Unavailable: NATS does not answer.
        """
        with nats_unavailable(f"open the bucket {HISTORY_BUCKET}"):
            self._chunks = await open_key_value(self._nc.jetstream(), _HISTORY_CONFIG)
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
                return self._codec.encode(missing) if missing is not None else None
            record = change(self._codec.decode(raw))
            if record is None:
                return None
            return self._codec.encode(replace(record, updated=time.time()))

        stored = (
            await self._records.update(run_id, encoded, "update a run") if _valid(run_id) else None
        )
        if stored is None:
            raise NotFound(f"run {run_id!r} not found")
        return stored

    def peek(self, run_id: str) -> RunRecord | None:
        """The run as the mirror holds it now (None: not there, or not yet)."""
        return self._records.peek(run_id)

    async def expanded(self, run: RunRecord) -> RunRecord:
        """The record with its sealed executions back in its history: to read, never to write.

        Raises:
            Unavailable: NATS does not answer.
        """
        if not run.seals:
            return run
        sealed = [await self._chunk(key) for key in _chunk_keys(run)]
        return _with_sealed(run, sealed)

    async def load_chunks(self, run: RunRecord) -> None:
        """Reads the run's sealed chunks that are not in memory (for `expanded_now`).

        Raises:
            Unavailable: NATS does not answer.
        """
        for key in _chunk_keys(run):
            if key not in self._read:
                await self._chunk(key)

    def expanded_now(self, run: RunRecord) -> RunRecord | None:
        """`expanded` from the chunks in memory; None when one is not."""
        sealed = [self._read.get(key) for key in _chunk_keys(run)]
        if any(chunk is None for chunk in sealed):
            return None
        return _with_sealed(run, [chunk for chunk in sealed if chunk is not None])

    async def seal(self, run: RunRecord) -> Callable[[RunRecord], RunRecord]:
        """Stores the finished executions that lead the run's history as one chunk once there
        are `SEAL_STEPS` of them, and returns what drops them from the record the next write
        makes (inside its compare-and-set: sealing costs no write of its own); that does
        nothing to a record whose head is no longer that chunk (sealed meanwhile) or that is
        done. Nothing is stored, and nothing dropped, while there are fewer.

        Raises:
            Unavailable: NATS does not answer.
        """
        count = _finished_head(run.history)
        if count < SEAL_STEPS:
            return _as_it_is
        chunk = run.history[:count]
        key = _chunk_key(run.run_id, run.sealed, count)
        assert self._chunks is not None, "start() first"
        with nats_unavailable("seal a run's history"):
            await self._chunks.put(key, encode_steps(chunk))
        self._keep(key, chunk)

        def sealed(record: RunRecord) -> RunRecord:
            if record.done or record.seals != run.seals or record.history[:count] != chunk:
                return record
            return replace(record, history=record.history[count:], seals=(*record.seals, count))

        return sealed

    async def _chunk(self, key: str) -> tuple[StepRecord, ...]:
        known = self._read.get(key)
        if known is not None:
            self._read.move_to_end(key)
            return known
        assert self._chunks is not None, "start() first"
        with nats_unavailable("read a run's history"):
            entry = await self._chunks.get(key)
        chunk = decode_steps(entry.value or b"[]")
        self._keep(key, chunk)
        return chunk

    def _keep(self, key: str, chunk: tuple[StepRecord, ...]) -> None:
        self._read[key] = chunk
        while len(self._read) > _KEEP_CHUNKS:
            self._read.popitem(last=False)

    async def records(self) -> list[RunRecord]:
        """Every run, as every replica wrote it so far, newest first."""
        return sorted(await self._records.synced("list runs"), key=_newest_first)

    def mirrored(self) -> list[RunRecord]:
        """What the mirror holds now, newest first."""
        return sorted(self._records.mirrored(), key=_newest_first)

    def live(self) -> list[RunRecord]:
        """The runs not done, as the mirror holds them (in no particular order)."""
        return [r for r in self._records.mirrored() if not r.done]

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
                if _newer(change.record, current):
                    current = change.record
                    yield current


class _Codec:
    """Records to bytes and back, remembering the latest ones: a run's record is read back as
    the bytes just written (by the compare-and-set, the mirror, the next advance), and a long
    run's record is large, so each is decoded once rather than at each of those reads."""

    _KEEP_BYTES = 64 * MIB

    def __init__(self) -> None:
        self._known: OrderedDict[bytes, RunRecord] = OrderedDict()
        self._bytes = 0

    def encode(self, record: RunRecord) -> bytes:
        data = record.encode()
        self._remember(data, record)
        return data

    def decode(self, data: bytes) -> RunRecord:
        known = self._known.get(data)
        if known is not None:
            self._known.move_to_end(data)
            return known
        record = RunRecord.decode(data)
        self._remember(data, record)
        return record

    def _remember(self, data: bytes, record: RunRecord) -> None:
        if data in self._known:
            return
        self._known[data] = record
        self._bytes += len(data)
        while self._bytes > self._KEEP_BYTES and self._known:
            dropped, _ = self._known.popitem(last=False)
            self._bytes -= len(dropped)


def _chunk_key(run_id: str, first: int, count: int) -> str:
    return f"{run_id}.{first}.{count}"


def _chunk_keys(run: RunRecord) -> list[str]:
    keys, first = [], 0
    for count in run.seals:
        keys.append(_chunk_key(run.run_id, first, count))
        first += count
    return keys


def _with_sealed(run: RunRecord, sealed: list[tuple[StepRecord, ...]]) -> RunRecord:
    history = tuple(step for chunk in sealed for step in chunk)
    return replace(run, history=(*history, *run.history), seals=())


def _finished_head(history: tuple[StepRecord, ...]) -> int:
    """How many finished executions lead `history`."""
    for index, step in enumerate(history):
        if not step.done:
            return index
    return len(history)


def _newer(record: RunRecord, than: RunRecord) -> bool:
    """Whether a watched change is one to send: written later, or at the same time and not the
    same (compared only then: comparing two records is O(steps) of a long run)."""
    if record.updated != than.updated:
        return record.updated > than.updated
    return record != than


def _as_it_is(run: RunRecord) -> RunRecord:
    return run


def _newest_first(run: RunRecord) -> tuple[float, str]:
    return (-run.created, run.run_id)


def _valid(run_id: str) -> bool:
    return bool(run_id) and len(run_id) <= 64 and all(c.isalnum() or c in "-_" for c in run_id)
