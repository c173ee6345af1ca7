"""nexus.common.kv on a real nats-server: opening buckets and stores, following a bucket."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nexus.common.kv import (
    KvEntry,
    KvFollower,
    KvRecords,
    kv_stream,
    open_key_value,
    open_object_store,
)
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings

pytestmark = pytest.mark.integration


def _bucket() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


class Seen:
    """Records what a follower handled and wakes whoever waits for a condition on it."""

    def __init__(self) -> None:
        self.entries: list[KvEntry] = []
        self._changed = asyncio.Condition()

    async def __call__(self, entry: KvEntry) -> None:
        async with self._changed:
            self.entries.append(entry)
            self._changed.notify_all()

    async def until(self, check: Callable[[list[KvEntry]], bool], timeout_s: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: check(self.entries)), timeout_s)


@contextlib.asynccontextmanager
async def following(nc: Client, bucket: str, keys: str = ">") -> AsyncIterator[Seen]:
    seen = Seen()
    follower = KvFollower(nc, bucket, seen, keys=keys)
    await follower.start()
    try:
        yield seen
    finally:
        await follower.stop()


async def _create_until_stored(kv: KeyValue, key: str, value: bytes) -> None:
    """Creates `key`, retrying through a server restart; a create that was stored although its
    answer was lost fails again as 'exists', so each key gets exactly one revision."""
    while True:
        try:
            await kv.create(key, value)
            return
        except KeyWrongLastSequenceError:
            return
        except (NatsError, TimeoutError):
            await asyncio.sleep(0.05)


async def test_follower_sees_every_update_across_a_server_restart(
    nats_server: NatsServer,
) -> None:
    settings = NexusSettings(nats_url=nats_server.url)
    follower_nc, writer_nc = await connect(settings, "follower"), await connect(settings, "writer")
    bucket = _bucket()
    kv = await open_key_value(writer_nc.jetstream(), api.KeyValueConfig(bucket=bucket))
    for i in range(3):
        await kv.put(f"before.{i}", b"x")
    count = 40

    async def write() -> None:
        for i in range(count):
            await _create_until_stored(kv, f"k.{i:03d}", str(i).encode())
            await asyncio.sleep(0.02)

    async with following(follower_nc, bucket) as seen:
        assert [(e.key, e.initial) for e in seen.entries] == [
            (f"before.{i}", True) for i in range(3)
        ]
        writing = asyncio.create_task(write())
        await asyncio.sleep(0.2)  # some written before the restart, the rest during and after
        await asyncio.to_thread(nats_server.restart)
        await writing
        await _create_until_stored(kv, "last", b"")
        await seen.until(lambda entries: entries[-1].key == "last", timeout_s=15)
    changes = seen.entries[3:]
    assert [e.key for e in changes] == [f"k.{i:03d}" for i in range(count)] + ["last"]
    assert not any(e.initial for e in changes)
    revisions = [e.revision for e in seen.entries]
    assert revisions == sorted(set(revisions))  # in order, none twice
    await follower_nc.close()
    await writer_nc.close()


async def test_follower_reports_deletions_and_filters_keys(nats_client: Client) -> None:
    bucket = _bucket()
    kv = await open_key_value(nats_client.jetstream(), api.KeyValueConfig(bucket=bucket))
    await kv.put("a.1", b"one")
    await kv.put("b.1", b"other")
    async with following(nats_client, bucket, keys="a.>") as seen:
        await kv.delete("a.1")
        await kv.put("b.2", b"other")
        await kv.put("a.2", b"two")
        await seen.until(lambda entries: entries[-1].key == "a.2", timeout_s=5)
    assert [(e.key, e.value, e.removed, e.initial) for e in seen.entries] == [
        ("a.1", b"one", False, True),
        ("a.1", b"", True, False),
        ("a.2", b"two", False, False),
    ]


async def test_sync_waits_for_what_another_client_wrote(nats_client: Client) -> None:
    bucket = _bucket()
    kv = await open_key_value(nats_client.jetstream(), api.KeyValueConfig(bucket=bucket))
    seen = Seen()
    follower = KvFollower(nats_client, bucket, seen)
    await follower.start()
    assert await follower.sync(timeout_s=1)  # an empty bucket
    revision = await kv.put("k", b"v")
    assert await follower.sync(timeout_s=5)
    assert follower.revision >= revision
    assert [e.key for e in seen.entries] == ["k"]
    await follower.stop()


async def test_open_key_value_brings_an_existing_bucket_up_to_its_config(
    nats_client: Client,
) -> None:
    js, bucket = nats_client.jetstream(), _bucket()
    await open_key_value(js, api.KeyValueConfig(bucket=bucket, ttl=60.0, history=1))
    again = api.KeyValueConfig(bucket=bucket, ttl=3600.0, history=5, max_value_size=1024)
    kv = await open_key_value(js, again)
    config = (await js.stream_info(kv_stream(bucket))).config
    assert (config.max_age, config.max_msgs_per_subject, config.max_msg_size) == (3600.0, 5, 1024)
    await kv.put("k", b"v")
    assert (await kv.get("k")).value == b"v"


async def test_open_object_store_creates_then_binds(nats_client: Client) -> None:
    js, bucket = nats_client.jetstream(), _bucket()
    config = api.ObjectStoreConfig(description="test store")
    store = await open_object_store(js, bucket, config)
    await store.put("a", b"payload")
    again = await asyncio.gather(*(open_object_store(js, bucket, config) for _ in range(3)))
    assert all([(await s.get("a")).data == b"payload" for s in again])


async def test_records_updated_by_two_writers_in_turn_lose_no_change(nats_client: Client) -> None:
    # Each writer's next update first tries the value it wrote last, without a read; the other
    # writer's change in between makes that try fail, and the update reads and applies again.
    config = api.KeyValueConfig(bucket=_bucket(), history=1)
    first = KvRecords(nats_client, config, lambda raw: int(raw))
    second = KvRecords(nats_client, config, lambda raw: int(raw))
    await first.start()
    await second.start()

    def add_one(raw: bytes | None) -> bytes:
        return str(int(raw or b"0") + 1).encode()

    try:
        for _ in range(10):
            await first.update("n", add_one, "count")
            await second.update("n", add_one, "count")
        await asyncio.gather(*(w.update("n", add_one, "count") for w in (first, second) * 5))
        stored = await first.get("n", "read")
    finally:
        await first.stop()
        await second.stop()

    assert stored is not None
    assert stored.record == 30


async def test_the_mirror_decodes_a_record_written_many_times_once_when_read(
    nats_client: Client,
) -> None:
    config = api.KeyValueConfig(bucket=_bucket(), history=1)
    decoded: list[bytes] = []

    def decode(raw: bytes) -> int:
        decoded.append(raw)
        return int(raw)

    writer = KvRecords(nats_client, config, lambda raw: int(raw))
    reader = KvRecords(nats_client, config, decode)
    await writer.start()
    await reader.start()
    try:
        for n in range(1, 11):
            await writer.update("n", lambda _raw, n=n: str(n).encode(), "count")
        with reader.watching("w") as changes:
            await writer.update("w", lambda _raw: b"7", "watched")
            watched = await changes.get()
        mirrored = await reader.synced("read")
        peeked = reader.peek("n")
    finally:
        await writer.stop()
        await reader.stop()

    assert watched is not None  # a watched key is decoded as it comes
    assert watched.record == 7
    assert sorted(mirrored) == [7, 10]
    assert peeked == 10
    assert decoded == [b"7", b"10"]


async def test_a_gathering_mirror_shows_its_own_process_write_at_once(
    nats_client: Client,
) -> None:
    config = api.KeyValueConfig(bucket=_bucket(), history=1)
    records = KvRecords(nats_client, config, lambda raw: int(raw), gather_s=60.0)
    await records.start()
    try:
        await records.update("w", lambda _raw: b"1", "first")
        mirrored = await records.synced("read")  # then the mirror gathers for a minute
        with records.watching("w") as changes:
            await records.update("w", lambda _raw: b"2", "watched")
            own = changes.get_nowait()  # from the write itself, not from the follower
            peeked = records.peek("w")
    finally:
        await records.stop()

    assert mirrored == [1]
    assert own is not None
    assert own.record == 2
    assert peeked == 2
