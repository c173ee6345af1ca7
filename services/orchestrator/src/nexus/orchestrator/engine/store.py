"""Runs in KV `nexus_orchestrator_runs`; what every replica sees of them in KV
`nexus_orchestrator_run_views`.

Every change is a compare-and-set (`nexus.common.kv.update_entry`): a replica advancing a run,
a cancel and a signal never overwrite each other. No replica follows the runs' bucket, which
takes a write at every step of every run: each follows the views (ADR 0056). A run's view is
its record as of a recent write, with that write's revision. A write outside a drive (a cancel,
signal, wake, take-over, a child run's start) is published as the view at once; the writes of
a drive (the steps that a replica takes one after another, from the start of a run it drives
itself) at most every `view_every_s` (0.1 s), a call in flight at once, and the drive's last
one at its end (the run then waits, ends or goes to the queue). A replica's own writes are in
its mirror at once, so its timers and watches see the runs it drives exactly; a watch of a run
driven elsewhere reads that run's writes from the runs' bucket while it lasts. Views only ever
move a run forward (by revision). A view behind its run is published again by whichever
replica next reads the run (its lease, a take-over), and every replica reads all runs once at
start and when another replica goes silent (`catch_up`): the runs that one created and had
not published yet.

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
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nexus.common.errors import NotFound
from nexus.common.events import DAY_S, MIB
from nexus.common.kv import (
    KvEntry,
    KvFollower,
    LastWritten,
    Mirror,
    nats_unavailable,
    open_key_value,
    update_entry,
)
from nexus.orchestrator.engine.records import (
    RunRecord,
    StepRecord,
    decode_steps,
    encode_steps,
    replace,
)

RETENTION_S = 30 * DAY_S


def _config(bucket: str, description: str, max_value_size: int = MIB) -> api.KeyValueConfig:
    return api.KeyValueConfig(
        bucket=bucket,
        description=f"Nexus orchestrator: {description}",
        history=1,
        ttl=RETENTION_S,
        max_value_size=max_value_size,
        storage=api.StorageType.FILE,
    )


BUCKET = "nexus_orchestrator_runs"
_CONFIG = _config(BUCKET, "runs, their state and history")
VIEWS_BUCKET = "nexus_orchestrator_run_views"
_VIEWS_CONFIG = _config(  # a record and its revision
    VIEWS_BUCKET, "each run as every replica sees it (a recent write)", MIB + 32
)
HISTORY_BUCKET = "nexus_orchestrator_history"
_HISTORY_CONFIG = _config(HISTORY_BUCKET, "sealed chunks of the runs' histories")
MIRROR_GATHER_S = 0.02
"""How long each replica's follower of the views lets them gather between batches (one
wake-up serves several, ADR 0053)."""
SEAL_STEPS = 16
"""Finished executions at the head of a record's history that are sealed into one chunk."""
_KEEP_CHUNKS = 4096
_KEEP_WRITTEN = 4096
_SYNC_TIMEOUT_S = 5.0

Change = Callable[[RunRecord], RunRecord | None]
"""The run's next record given its latest; None: leave it as it is."""


class RunStore:
    """Every run of the deployment.

    Args:
        nc: The NATS connection.
        view_every_s: How often at most a drive publishes its run's view before the drive's
            end: how far behind another replica's lists may show a run driven here.
    """

    def __init__(self, nc: Client, view_every_s: float = 0.1) -> None:
        self._nc = nc
        self._view_every_s = view_every_s
        self._codec = _Codec()
        self._mirror = Mirror(self._codec.decode)  # each run as views and own writes show it
        self._follower = KvFollower(nc, VIEWS_BUCKET, self._on_view, gather_s=MIRROR_GATHER_S)
        self._kv: KeyValue | None = None
        self._views: KeyValue | None = None
        self._chunks: KeyValue | None = None
        self._read: OrderedDict[str, tuple[StepRecord, ...]] = OrderedDict()
        self._written = LastWritten(_KEEP_WRITTEN, forgotten=self._forget)  # latest known
        self._viewed: dict[str, int] = {}  # run -> the revision its view shows
        self._viewed_at: dict[str, float] = {}  # run -> when this replica last published it
        self._writes: KvFollower | None = None  # every run's writes, while an older replica runs

    async def start(self) -> None:
        """Opens the buckets, loads the views, and publishes those behind their runs.

        Raises:
            Unavailable: NATS does not answer.
        """
        js = self._nc.jetstream()
        with nats_unavailable("open the runs' buckets"):
            self._chunks = await open_key_value(js, _HISTORY_CONFIG)
            self._kv = await open_key_value(js, _CONFIG)
            self._views = await open_key_value(js, _VIEWS_CONFIG)
        await self._follower.start()
        await self.catch_up()

    async def stop(self) -> None:
        """Stops following; open watches end."""
        await self._follower.stop()
        if self._writes is not None:
            await self._writes.stop()
        self._mirror.close()

    async def follow_writes(self, on: bool) -> None:
        """Follows every run's writes too (`on`), as every replica did before views: needed
        while a replica of that version runs beside this one (it publishes no views). Once
        off again, publishes the views that are behind (the runs it wrote).

        Raises:
            Unavailable: NATS does not answer.
        """
        if on == (self._writes is not None):
            return
        if self._writes is not None:
            await self._writes.stop()
            self._writes = None
            await self.catch_up()
            return

        async def written(entry: KvEntry) -> None:
            if not entry.removed and entry.value:
                self._mirror.put_raw(entry.key, entry.value, entry.revision)

        writes = KvFollower(self._nc, BUCKET, written, gather_s=MIRROR_GATHER_S)
        await writes.start()
        self._writes = writes

    async def catch_up(self) -> None:
        """Reads every run once and publishes the views that are behind: runs that a version
        without views wrote (an upgrade), or whose replica died before it published them (at
        start, and when a replica goes silent).

        Raises:
            Unavailable: NATS does not answer.
        """

        async def seen(entry: KvEntry) -> None:
            if not entry.removed and entry.value and entry.revision > self._viewed_rev(entry.key):
                self._mirror.put_raw(entry.key, entry.value, entry.revision)
                await self._publish(entry.key, entry.value, entry.revision)

        runs = KvFollower(self._nc, BUCKET, seen)
        await runs.start()
        await runs.stop()

    async def create(self, record: RunRecord, *, driven_here: bool = False) -> RunRecord:
        """Stores a new run (a run of that id already stored is returned as it is). A run
        `driven_here` is published by its drive, as any drive's writes: if this replica dies
        first, the others publish it once they find it silent (`catch_up`), then take it over.

        Raises:
            Unavailable: NATS does not answer.
        """
        if driven_here:
            self._viewed_at[record.run_id] = time.monotonic()
        stored = await self.update(record.run_id, _as_stored, missing=record, quiet=driven_here)
        if stored.created != record.created:  # it was there: its view, if it has none
            await self.publish_view(record.run_id)
        return stored

    async def get(self, run_id: str) -> RunRecord:
        """The run as stored now.

        Raises:
            NotFound: No such run.
            Unavailable: NATS does not answer.
        """
        assert self._kv is not None, "start() first"
        if not _valid(run_id):
            raise NotFound(f"run {run_id!r} not found")
        with nats_unavailable("read a run"):
            try:
                entry = await self._kv.get(run_id)
            except KeyNotFoundError:
                entry = None
        if entry is None or not entry.value:
            raise NotFound(f"run {run_id!r} not found")
        self._known(run_id, entry.value, entry.revision or 0)
        return self._codec.decode(entry.value)

    async def update(
        self,
        run_id: str,
        change: Change,
        *,
        missing: RunRecord | None = None,
        quiet: bool = False,
    ) -> RunRecord:
        """Applies `change` to the latest record with compare-and-set; sets `updated`; then
        publishes the run's view, unless `quiet` (a write of a drive) and this replica
        published it less than `view_every_s` ago.

        Raises:
            NotFound: No such run and no `missing` record.
            Aborted: Too many concurrent changes.
            Unavailable: NATS does not answer.
        """
        assert self._kv is not None, "start() first"

        def encoded(raw: bytes | None) -> bytes | None:
            if raw is None:
                return self._codec.encode(missing) if missing is not None else None
            record = change(self._codec.decode(raw))
            if record is None:
                return None
            return self._codec.encode(replace(record, updated=time.time()))

        if not _valid(run_id):
            raise NotFound(f"run {run_id!r} not found")
        with nats_unavailable("update a run"):
            raw, revision = await update_entry(
                self._kv, run_id, encoded, known=self._written.get(run_id)
            )
        if raw is None:
            raise NotFound(f"run {run_id!r} not found")
        self._known(run_id, raw, revision)
        record = self._codec.decode(raw)
        self._mirror.put(run_id, record, revision)
        recent = time.monotonic() - self._viewed_at.get(run_id, float("-inf")) < self._view_every_s
        if not (quiet and recent):
            await self._publish(run_id, raw, revision)
        return record

    async def publish_view(self, run_id: str) -> None:
        """Publishes the run's view when it is behind the latest record this replica wrote or
        read (at the end of a drive, and after reading a run whose view may be behind).

        Raises:
            Unavailable: NATS does not answer.
        """
        known = self._written.get(run_id)
        if known is not None:
            await self._publish(run_id, *known)

    def peek(self, run_id: str) -> RunRecord | None:
        """The run as this replica's mirror holds it now (None: not there, or not yet)."""
        return self._mirror.peek(run_id)

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
        """Every run, as every replica published it so far, newest first.

        Raises:
            Unavailable: NATS does not answer.
        """
        with nats_unavailable("list runs"):
            await self._follower.sync(_SYNC_TIMEOUT_S)
        return self.mirrored()

    def mirrored(self) -> list[RunRecord]:
        """What the mirror holds now, newest first."""
        return sorted(self._mirror.records(), key=_newest_first)

    def live(self) -> list[RunRecord]:
        """The runs not done, as the mirror holds them (in no particular order)."""
        return [r for r in self._mirror.records() if not r.done]

    async def watch(self, run_id: str, here: str = "") -> AsyncIterator[RunRecord]:
        """The run as it is now, then each change, until it is done. While the run is driven
        elsewhere than `here` (this replica's id), its writes are read from the runs' bucket.

        Raises:
            NotFound: No such run.
        """
        writes: KvFollower | None = None
        with self._mirror.watching(run_id) as changes:
            try:
                current = await self.get(run_id)
                yield current
                while not current.done:
                    if writes is None and current.driven_by != here:
                        writes = await self._follow_writes(run_id)
                    change = await changes.get()
                    if change is None:
                        return
                    if _newer(change.record, current):
                        current = change.record
                        yield current
            finally:
                if writes is not None:
                    await writes.stop()

    async def _follow_writes(self, run_id: str) -> KvFollower:
        """Every write of one run from the runs' bucket into the mirror (for its watchers)."""

        async def written(entry: KvEntry) -> None:
            if not entry.removed and entry.value:
                self._mirror.put_raw(run_id, entry.value, entry.revision)

        writes = KvFollower(self._nc, BUCKET, written, keys=run_id)
        await writes.start()
        return writes

    async def _on_view(self, entry: KvEntry) -> None:
        if entry.removed or not entry.value:  # purged by hand: the run may still be there
            self._viewed.pop(entry.key, None)
            return
        revision, raw = _unview(entry.value)
        self._viewed[entry.key] = max(revision, self._viewed_rev(entry.key))
        self._mirror.put_raw(entry.key, raw, revision)

    async def _publish(self, run_id: str, raw: bytes, revision: int) -> None:
        """Publishes the run's view of `revision` unless it shows that one or a later one."""
        if revision <= self._viewed_rev(run_id):
            return
        assert self._views is not None, "start() first"
        with nats_unavailable("publish a run's view"):
            await self._views.put(run_id, _view(revision, raw))
        self._viewed[run_id] = revision
        self._viewed_at[run_id] = time.monotonic()

    def _viewed_rev(self, run_id: str) -> int:
        return self._viewed.get(run_id, -1)

    def _known(self, run_id: str, raw: bytes, revision: int) -> None:
        """The latest value of the run this replica wrote or read: the next update tries it
        first, without a read (a run advanced step after step costs one round trip a step)."""
        self._written.remember(run_id, raw, revision)

    def _forget(self, run_id: str) -> None:
        self._viewed_at.pop(run_id, None)


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


def _as_stored(run: RunRecord) -> None:
    return None


def _view(revision: int, raw: bytes) -> bytes:
    """A view's value: the revision of the run's record it shows, a newline, the record."""
    return b"%d\n%s" % (revision, raw)


def _unview(value: bytes) -> tuple[int, bytes]:
    revision, _, raw = value.partition(b"\n")
    return int(revision), raw


def _newest_first(run: RunRecord) -> tuple[float, str]:
    return (-run.created, run.run_id)


def _valid(run_id: str) -> bool:
    return bool(run_id) and len(run_id) <= 64 and all(c.isalnum() or c in "-_" for c in run_id)
