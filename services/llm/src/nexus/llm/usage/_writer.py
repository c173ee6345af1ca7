"""Group commit of counters to KV entries with compare-and-set."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nexus.common.errors import Aborted
from nexus.llm.usage._counters import Counters

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 64
_KNOWN_KEYS = 4_096


@dataclass
class _Batch:
    """Counters waiting to be added to one key, and the records waiting for them."""

    counters: Counters
    waiters: list[asyncio.Future[None]]


class GroupWriter:
    """Adds counters to KV entries with compare-and-set, one writer task per key: what arrives
    for a key while its write is in flight is summed and written next, in one update.

    The revision and value it last wrote of a key are remembered (`_KNOWN_KEYS` most recent
    keys), so the next write of that key tries them without reading the entry first: one KV
    round trip instead of two while this replica is the only writer. When another replica
    wrote meanwhile, the compare-and-set fails and the entry is read, as for any conflict.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._pending: dict[str, _Batch] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._known: OrderedDict[str, tuple[int, Counters]] = OrderedDict()
        self.conflicts = 0
        """Compare-and-set conflicts met (another replica wrote first), for tests and logs."""

    def add(self, key: str, counters: Counters) -> asyncio.Future[None]:
        """Queues `counters` for `key`.

        Returns:
            A future done once they are stored (or failed with the error that stopped them).
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = self._pending.setdefault(key, _Batch(Counters(), []))
        batch.counters.add(counters)
        batch.waiters.append(waiter)
        if key not in self._writers:
            self._writers[key] = asyncio.create_task(self._write(key))
        return waiter

    async def _write(self, key: str) -> None:
        try:
            while (batch := self._pending.pop(key, None)) is not None:
                try:
                    await self._apply(key, batch.counters)
                except BaseException as err:
                    _settle(batch.waiters, err)
                    if isinstance(err, asyncio.CancelledError):
                        raise
                else:
                    _settle(batch.waiters, None)
        finally:
            self._writers.pop(key, None)
            if (left := self._pending.pop(key, None)) is not None:  # cancelled meanwhile
                _settle(left.waiters, asyncio.CancelledError())

    async def _apply(self, key: str, delta: Counters) -> None:
        """Adds `delta` to the entry of `key`: read (unless this writer knows its latest
        revision), add, write if nobody wrote meanwhile."""
        known = self._known.pop(key, None)
        if known is not None:
            revision, total = known
            if await self._put(key, total.plus(delta), revision):
                return
            self.conflicts += 1  # another replica wrote since; read it, without waiting
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:
                self.conflicts += 1
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:  # also a deleted key; `create` handles its tombstone
                if await self._put(key, Counters().plus(delta), None):
                    return
                continue
            revision = entry.revision or 0
            if await self._put(key, decoded(key, entry.value).plus(delta), revision):
                return
        raise Aborted(f"usage totals {key} kept changing; {_CAS_ATTEMPTS} attempts failed")

    async def _put(self, key: str, total: Counters, last: int | None) -> bool:
        """Writes `total` if the entry's revision is still `last` (None: if there is none);
        False when another writer came first."""
        try:
            if last is None:
                revision = await self._kv.create(key, total.encode())
            else:
                revision = await self._kv.update(key, total.encode(), last=last)
        except KeyWrongLastSequenceError:
            return False
        self._known[key] = (int(revision), total)
        while len(self._known) > _KNOWN_KEYS:
            self._known.popitem(last=False)
        return True

    def cancel(self) -> None:
        """Cancels every writer (waiters get CancelledError)."""
        for task in list(self._writers.values()):
            task.cancel()


def decoded(key: str, value: bytes | None) -> Counters:
    try:
        return Counters.decode(value or b"{}")
    except ValueError as err:
        log.error("usage totals %s are malformed (%s); starting them over", key, err)
        return Counters()


def _settle(waiters: Iterable[asyncio.Future[None]], err: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():  # its record was cancelled
            continue
        if err is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(err)
