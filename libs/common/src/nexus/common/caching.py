"""An in-process cache: bounded (least recently used out first), entries expire, loads coalesce.

Every look-up counts as a hit or a miss in `nexus_cache_requests_total{cache=<name>}`.
`get_or_load` runs one loader per key however many callers miss it at once; a `delete` or
`clear` during a load keeps that load's (possibly stale) result out of the cache, so an
invalidation is never undone by a load that started before it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar, cast

from nexus.common.telemetry.metrics import record_cache_request

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class TTLCache(Generic[K, V]):
    """A bounded LRU cache whose entries expire.

    Args:
        name: The `cache` label of its metrics.
        maxsize: Most entries kept; the least recently used goes first.
        ttl_s: Seconds an entry lives unless `set` says otherwise; None: until evicted.
    """

    def __init__(self, name: str, *, maxsize: int = 1024, ttl_s: float | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.name = name
        self.maxsize = maxsize
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loads: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        """Entries not yet expired."""
        self._purge_expired()
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The live value of `key`, or None (a cached None reads the same as a miss)."""
        value = self._lookup(key)
        return None if value is _MISSING else cast(V, value)

    def contains_many(self, keys: Sequence[K]) -> list[bool]:
        """Whether each of `keys` has a live value, as `get` would find it (each one counted
        as a look-up, and refreshed when found), with one metric update per outcome rather
        than one per key: for a batch's keys on a hot path."""
        now = time.monotonic()
        found = [self._live(key, now) is not None for key in keys]
        hits = sum(found)
        self._count_many(hits, len(found) - hits)
        return found

    def set(self, key: K, value: V, ttl_s: float | None = None) -> None:
        """Stores `value`, for `ttl_s` seconds (default: the cache's TTL), evicting the LRU."""
        ttl = self.ttl_s if ttl_s is None else ttl_s
        expires = time.monotonic() + ttl if ttl is not None else float("inf")
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def delete(self, key: K) -> None:
        """Forgets `key`, and the result of any load of it in progress."""
        self._entries.pop(key, None)
        self._loads.pop(key, None)

    def clear(self) -> None:
        """Forgets everything, including loads in progress."""
        self._entries.clear()
        self._loads.clear()

    async def get_or_load(self, key: K, loader: Callable[[], Awaitable[V]]) -> V:
        """The cached value of `key`, or the loader's result, cached (None values too).

        Concurrent callers that miss the same key share one loader call; if it raises, they
        all get its exception and nothing is cached. A caller cancelled while waiting does not
        cancel the load for the others.
        """
        value = self._lookup(key)
        if value is not _MISSING:
            return cast(V, value)
        load = self._loads.get(key)
        if load is None:
            load = asyncio.ensure_future(self._load(key, loader))
            load.add_done_callback(_retrieve_exception)
            self._loads[key] = load
        return await asyncio.shield(load)

    async def _load(self, key: K, loader: Callable[[], Awaitable[V]]) -> V:
        me = asyncio.current_task()
        try:
            value = await loader()
            if self._loads.get(key) is me:  # not invalidated while loading
                self.set(key, value)
            return value
        finally:
            if self._loads.get(key) is me:
                del self._loads[key]

    def _lookup(self, key: K) -> V | object:
        entry = self._live(key, time.monotonic())
        self._count(entry is not None)
        return _MISSING if entry is None else entry[1]

    def _live(self, key: K, now: float) -> tuple[float, V] | None:
        """`key`'s entry when it has not expired by `now` (then made the most recently used);
        an expired one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def _count(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        record_cache_request(self.name, hit)

    def _count_many(self, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses
        for hit, n in ((True, hits), (False, misses)):
            if n:
                record_cache_request(self.name, hit, n)

    def _purge_expired(self) -> None:
        now = time.monotonic()
        for key in [k for k, (expires, _) in self._entries.items() if expires <= now]:
            del self._entries[key]


def _retrieve_exception(task: asyncio.Task[object]) -> None:
    """Marks a failed load's exception as seen: its callers may all have been cancelled."""
    if not task.cancelled():
        task.exception()
