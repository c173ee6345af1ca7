"""JetStream KV buckets and object stores: open one, follow one.

Every part that keeps state in NATS opens its bucket with `open_key_value` (or its store with
`open_object_store`), and every part that mirrors a bucket in memory follows it with a
`KvFollower`: the latest value of each key first, then every change in order, resuming right
after the last entry it handled when NATS restarts or loses the consumer. `KvRecords` is the
usual pair of both: records changed by compare-and-set, mirrored for lists and watches.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from nexus.common.errors import Aborted, Unavailable
from nexus.common.events import Follower

_TWO_MINUTES_S = 120.0
START_TIMEOUT_S = 120.0
"""How long `KvFollower.start` waits for the snapshot (replaying a large bucket takes a while)."""
_REMOVED = ("DEL", "PURGE")


async def open_key_value(js: JetStreamContext, config: api.KeyValueConfig) -> KeyValue:
    """Creates a KV bucket, or binds it and brings its limits up to `config`.

    Replicas starting together may all create it: creating with the same configuration is
    idempotent. A bucket made with another configuration (an older TTL, value size or history
    setting) is updated to this one.
    """
    try:
        return await js.create_key_value(config)
    except BadRequestError:  # exists with another configuration
        stream = kv_stream(config.bucket)
        current = (await js.stream_info(stream)).config
        ttl_or_window = config.ttl or _TWO_MINUTES_S
        await js.update_stream(
            replace(
                current,
                max_age=config.ttl,
                max_msgs_per_subject=config.history,
                duplicate_window=min(current.duplicate_window or _TWO_MINUTES_S, ttl_or_window),
                max_msg_size=config.max_value_size,
                description=config.description,
            )
        )
        return await js.key_value(config.bucket)


async def open_object_store(
    js: JetStreamContext, bucket: str, config: api.ObjectStoreConfig | None = None
) -> ObjectStore:
    """Binds the object store `bucket`, creating it with `config` when it does not exist yet."""
    try:
        return await js.object_store(bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_object_store(bucket, config=config)
    except BadRequestError:  # another replica created it in the meantime, otherwise
        return await js.object_store(bucket)


Change = Callable[[bytes | None], bytes | None]
"""The new value of a key given its latest (None: no such key); None from it: write nothing."""
CAS_ATTEMPTS = 64
"""Compare-and-set attempts of `update_entry` before it gives up (Aborted)."""


async def update_entry(
    kv: KeyValue, key: str, change: Change, *, known: tuple[bytes, int] | None = None
) -> tuple[bytes | None, int]:
    """Applies `change` to the latest value of `key` with compare-and-set (KV create when there
    is none), reading and applying it again each time another writer came first.

    Args:
        kv: The bucket.
        key: The key.
        change: The latest value (None: none) -> the value to write (None: leave it). It may be
            called several times, on values that turn out stale: it must only compute.
        known: A value and its revision believed current (the caller's own last write), tried
            first without a read; if another writer came since, that write fails and the read
            follows.

    Returns:
        The value now stored (what `change` wrote, or the latest value when it wrote nothing)
        and its revision (0: no such key).

    Raises:
        Aborted: When `CAS_ATTEMPTS` writes in a row lost.
        nats.errors.Error, TimeoutError: When NATS does not answer.
    """
    if known is not None and (value := change(known[0])) is not None:
        with suppress(KeyWrongLastSequenceError):
            return value, await kv.update(key, value, last=known[1])
    for _ in range(CAS_ATTEMPTS):
        try:
            entry = await kv.get(key)
            current, revision = entry.value, entry.revision or 0
        except KeyNotFoundError:  # absent or deleted: created anew
            current, revision = None, 0
        value = change(current)
        if value is None:
            return current, revision
        try:
            if revision == 0:
                return value, await kv.create(key, value)
            return value, await kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError:
            continue
    raise Aborted(f"{key}: {CAS_ATTEMPTS} concurrent changes in a row; retry")


@contextmanager
def nats_unavailable(action: str) -> Iterator[None]:
    """NATS errors and timeouts inside the block as Unavailable ("cannot <action>: ...")."""
    try:
        yield
    except (NatsError, TimeoutError) as err:
        raise Unavailable(f"cannot {action}: NATS does not answer ({err!r})") from err


def kv_stream(bucket: str) -> str:
    """The stream that holds a KV bucket."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, keys: str = ">") -> str:
    """The subject (filter) of `keys` of a KV bucket."""
    return f"$KV.{bucket}.{keys}"


@dataclass(frozen=True)
class KvEntry:
    """One entry of a followed bucket.

    Attributes:
        key: The key.
        value: The value (empty for a deletion).
        revision: Its stream sequence, which orders every entry of the bucket.
        removed: A delete or purge.
        initial: Part of the snapshot that `start` waits for, not a change made since.
    """

    key: str
    value: bytes
    revision: int
    removed: bool
    initial: bool


EntryHandler = Callable[[KvEntry], Awaitable[None]]


class KvFollower:
    """Follows a KV bucket into memory: every key's latest entry (the snapshot), then each
    change, in revision order.

    Built on `nexus.common.events.Follower`: when NATS restarts or loses the consumer, the
    follower re-subscribes from the revision after the last one it handled, so nothing is missed
    and nothing is handled twice. Writers wait for `settled` to read their own writes from the
    mirror; readers call `sync` to see every replica's.

    Args:
        nc: The NATS connection.
        bucket: The bucket (open it first, with `open_key_value`).
        on_entry: Awaited for each entry, in order; what it raises is logged and skipped.
        keys: A key filter (NATS wildcards: "svc.>").
        gather_s: How long to let changes gather between batches (see `Follower`).
    """

    def __init__(
        self,
        nc: Client,
        bucket: str,
        on_entry: EntryHandler,
        *,
        keys: str = ">",
        gather_s: float = 0.0,
    ):
        self._js = nc.jetstream()
        self._stream = kv_stream(bucket)
        self._subject = kv_subject(bucket, keys)
        self._prefix = kv_subject(bucket, "")
        self._on_entry = on_entry
        self._follower = Follower(
            nc,
            self._stream,
            self._subject,
            self._on_message,
            deliver=api.DeliverPolicy.LAST_PER_SUBJECT,
            gather_s=gather_s,
        )
        self._revision = 0
        self._progress = asyncio.Condition()

    @property
    def revision(self) -> int:
        """The revision up to which every entry was handled."""
        return self._revision

    @property
    def caught_up(self) -> bool:
        """Whether the snapshot was handled."""
        return self._follower.caught_up.is_set()

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Starts following; returns once the snapshot was handled.

        Raises:
            Unavailable: NATS does not answer, or the snapshot takes longer than `timeout_s`.
        """
        await self._follower.start()
        try:
            await asyncio.wait_for(self._follower.caught_up.wait(), timeout_s)
        except TimeoutError as err:
            await self._follower.stop()
            raise Unavailable(f"{self._stream} did not load in {timeout_s:g} s") from err

    async def stop(self) -> None:
        """Stops following; what was handled stays handled."""
        await self._follower.stop()

    async def settled(self, revision: int, timeout_s: float) -> bool:
        """Waits until the entry of `revision` was handled.

        Returns:
            False when `timeout_s` passed first.
        """
        if self._revision >= revision:
            return True
        try:
            async with self._progress:
                ready = self._progress.wait_for(lambda: self._revision >= revision)
                await asyncio.wait_for(ready, timeout_s)
        except TimeoutError:
            return False
        return True

    async def sync(self, timeout_s: float) -> bool:
        """Waits until every entry that the bucket held when called was handled (so a reader
        sees what any replica wrote before).

        Returns:
            False when `timeout_s` passed first.

        Raises:
            nats.errors.Error, TimeoutError: When NATS does not answer.
        """
        try:
            last = await self._js.get_last_msg(self._stream, self._subject)
        except NotFoundError:
            return True  # nothing in the bucket
        return await self.settled(last.seq or 0, timeout_s)

    async def _on_message(self, msg: Msg) -> None:
        revision = msg.metadata.sequence.stream
        entry = KvEntry(
            key=msg.subject.removeprefix(self._prefix),
            value=msg.data,
            revision=revision,
            removed=(msg.headers or {}).get("KV-Operation") in _REMOVED,
            initial=not self.caught_up,
        )
        try:
            await self._on_entry(entry)
        finally:
            async with self._progress:
                self._revision = max(self._revision, revision)
                self._progress.notify_all()


R = TypeVar("R")


@dataclass(frozen=True)
class Versioned(Generic[R]):
    """A record and its KV revision (which orders every change of the bucket)."""

    record: R
    revision: int


class Mirror(Generic[R]):
    """Records by key as one process holds them in memory, each the one of the highest KV
    revision put, with per-key change feeds (watches) and listeners. A stored value is decoded
    when read, unless a watch of its key or a listener waits for it: a key written many times
    between two reads (a run advanced step after step elsewhere) is decoded once.

    Args:
        decode: A stored value -> its record.
    """

    def __init__(self, decode: Callable[[bytes], R]) -> None:
        self._decode = decode
        self._records: dict[str, R] = {}
        self._undecoded: dict[str, bytes] = {}  # key -> its latest value, decoded when read
        self._revisions: dict[str, int] = {}
        self._watchers: dict[str, set[asyncio.Queue[Versioned[R] | None]]] = {}
        self._listeners: list[Callable[[R], None]] = []

    def on_change(self, listener: Callable[[R], None]) -> None:
        """Calls `listener` with every record put from now on (on the event loop)."""
        self._listeners.append(listener)

    def revision(self, key: str) -> int:
        """The revision of the record held for `key` (0: none)."""
        return self._revisions.get(key, 0)

    def put(self, key: str, record: R, revision: int) -> None:
        """Holds `record` unless one of `revision` or later is held; tells the key's watchers
        and the listeners."""
        if revision <= self.revision(key):
            return
        self._revisions[key] = revision
        self._undecoded.pop(key, None)
        self._records[key] = record
        self._notify(key, Versioned(record, revision))
        for listener in self._listeners:
            listener(record)

    def put_raw(self, key: str, raw: bytes, revision: int) -> None:
        """`put` of a stored value, decoded when read (at once when it is waited for)."""
        if revision <= self.revision(key):
            return
        if self._listeners or key in self._watchers:
            self.put(key, self._decode(raw), revision)
            return
        self._revisions[key] = revision
        self._records.pop(key, None)
        self._undecoded[key] = raw

    def remove(self, key: str) -> None:
        """Drops the key's record; its watches end."""
        self._revisions.pop(key, None)
        self._records.pop(key, None)
        self._undecoded.pop(key, None)
        self._notify(key, None)

    def peek(self, key: str) -> R | None:
        """The record of `key` held now (None: none)."""
        raw = self._undecoded.pop(key, None)
        if raw is not None:
            self._records[key] = self._decode(raw)
        return self._records.get(key)

    def records(self) -> list[R]:
        """Every record held now (in no particular order)."""
        for key, raw in self._undecoded.items():
            self._records[key] = self._decode(raw)
        self._undecoded.clear()
        return list(self._records.values())

    def close(self) -> None:
        """Ends every watch."""
        for key in list(self._watchers):
            self._notify(key, None)

    @contextmanager
    def watching(self, key: str) -> Iterator[asyncio.Queue[Versioned[R] | None]]:
        """A queue of every newer record of `key` put from now on; None once the record is
        removed or the mirror closed."""
        queue: asyncio.Queue[Versioned[R] | None] = asyncio.Queue()
        self._watchers.setdefault(key, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._watchers.get(key, set())
            queues.discard(queue)
            if not queues:
                self._watchers.pop(key, None)

    def _notify(self, key: str, change: Versioned[R] | None) -> None:
        for queue in self._watchers.get(key, ()):
            queue.put_nowait(change)


class LastWritten:
    """The latest value and revision of each key that this process wrote or read, for the
    `keep` keys used last: `update_entry(known=...)` tries it first, without a read, so a key
    changed again and again by one process (a run advanced step after step) costs one round
    trip a change.

    Args:
        keep: How many keys are remembered.
        forgotten: Called with each key dropped to make room.
    """

    def __init__(self, keep: int = 4096, forgotten: Callable[[str], None] | None = None) -> None:
        self._keep = keep
        self._forgotten = forgotten
        self._values: OrderedDict[str, tuple[bytes, int]] = OrderedDict()

    def get(self, key: str) -> tuple[bytes, int] | None:
        return self._values.get(key)

    def remember(self, key: str, raw: bytes | None, revision: int) -> None:
        """Keeps `raw` as the key's value at `revision` unless a later one is kept; forgets
        the key when there is no value (`raw` None or no revision)."""
        if raw is None or not revision:
            self._values.pop(key, None)
            return
        known = self._values.pop(key, None)
        if known is not None and revision < known[1]:
            raw, revision = known
        self._values[key] = (raw, revision)
        if len(self._values) > self._keep:
            dropped, _ = self._values.popitem(last=False)
            if self._forgotten is not None:
                self._forgotten(dropped)


class KvRecords(Generic[R]):
    """Records in a KV bucket, each changed only by compare-and-set, mirrored in memory by every
    replica: the mirror serves lists, per-key change feeds (watches) and listeners.

    Args:
        nc: The NATS connection.
        config: The bucket's configuration.
        decode: A stored value -> its record.
        keys: The keys followed (NATS wildcards: "svc.>").
        gather_s: How long the mirror lets changes gather between batches (see `Follower`).
            When set, this process's own writes are in its mirror (and sent to the key's
            watchers and the listeners) as soon as written, not a batch later; the follower's
            copy of them is then skipped.
    """

    _SYNC_TIMEOUT_S = 5.0

    def __init__(
        self,
        nc: Client,
        config: api.KeyValueConfig,
        decode: Callable[[bytes], R],
        *,
        keys: str = ">",
        gather_s: float = 0.0,
    ) -> None:
        self._nc = nc
        self._gather_s = gather_s
        self._written = LastWritten()
        self._config = config
        self._decode = decode
        self._keys = keys
        self._kv: KeyValue | None = None
        self._follower: KvFollower | None = None
        self._mirror = Mirror(decode)

    def on_change(self, listener: Callable[[R], None]) -> None:
        """Calls `listener` with every record the mirror applies (on the event loop)."""
        self._mirror.on_change(listener)

    async def start(self) -> None:
        """Opens the bucket and loads the mirror.

        Raises:
            Unavailable: NATS does not answer.
        """
        bucket = self._config.bucket or ""
        with nats_unavailable(f"open the bucket {bucket}"):
            self._kv = await open_key_value(self._nc.jetstream(), self._config)
        follower = KvFollower(
            self._nc, bucket, self._apply, keys=self._keys, gather_s=self._gather_s
        )
        await follower.start()
        self._follower = follower

    async def stop(self) -> None:
        """Stops following; open change feeds end."""
        if self._follower is not None:
            await self._follower.stop()
        self._mirror.close()

    async def get(self, key: str, action: str) -> Versioned[R] | None:
        """The record stored now under `key` (None: none); `action` names it in errors.

        Raises:
            Unavailable: NATS does not answer.
        """
        assert self._kv is not None, "start() first"
        with nats_unavailable(action):
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                return None
        if entry is None or not entry.value:
            return None
        return Versioned(self._decode(entry.value), entry.revision or 0)

    async def update(self, key: str, change: Change, action: str) -> R | None:
        """`update_entry` on `key`: the record now stored (None: none, and `change` made none).

        Raises:
            Aborted: Too many concurrent changes.
            Unavailable: NATS does not answer.
        """
        assert self._kv is not None, "start() first"
        with nats_unavailable(action):
            raw, revision = await update_entry(self._kv, key, change, known=self._written.get(key))
        self._written.remember(key, raw, revision)
        if raw is None:
            return None
        record = self._decode(raw)
        if self._gather_s:
            self._mirror.put(key, record, revision)  # now, not when its follower brings it
        return record

    async def synced(self, action: str) -> list[R]:
        """Every record, as every replica wrote it so far."""
        if self._follower is not None:
            with nats_unavailable(action):
                await self._follower.sync(self._SYNC_TIMEOUT_S)
        return self.mirrored()

    def peek(self, key: str) -> R | None:
        """The record of `key` as the mirror holds it now (None: none, or not yet)."""
        return self._mirror.peek(key)

    def mirrored(self) -> list[R]:
        """What the mirror holds now (in no particular order)."""
        return self._mirror.records()

    def watching(self, key: str) -> AbstractContextManager[asyncio.Queue[Versioned[R] | None]]:
        """A queue of every change of `key` the mirror applies from now on; None once the
        record is removed or the mirror stops."""
        return self._mirror.watching(key)

    async def _apply(self, entry: KvEntry) -> None:
        if entry.removed or not entry.value:
            self._mirror.remove(entry.key)
        else:  # skipped when applied already, from this process's own write
            self._mirror.put_raw(entry.key, entry.value, entry.revision)
