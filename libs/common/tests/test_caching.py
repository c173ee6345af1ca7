"""TTLCache: expiry, LRU bound, coalesced loads, invalidation during a load, metrics."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

from nexus.common.caching import TTLCache


def _name() -> str:
    return f"test_{uuid.uuid4().hex[:8]}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr("nexus.common.caching.time.monotonic", fake)
    return fake


def test_entries_expire_after_their_ttl(clock: FakeClock) -> None:
    cache: TTLCache[str, int] = TTLCache(_name(), ttl_s=10)
    cache.set("a", 1)
    cache.set("b", 2, ttl_s=30)
    clock.now += 9.9
    assert cache.get("a") == 1
    clock.now += 0.2
    assert cache.get("a") is None
    assert cache.get("b") == 2
    assert len(cache) == 1


def test_without_ttl_entries_live_until_evicted(clock: FakeClock) -> None:
    cache: TTLCache[str, int] = TTLCache(_name())
    cache.set("a", 1)
    clock.now += 1e9
    assert cache.get("a") == 1


def test_least_recently_used_goes_first() -> None:
    cache: TTLCache[str, int] = TTLCache(_name(), maxsize=2)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # "b" is now the least recently used
    cache.set("c", 3)
    assert len(cache) == 2
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)


def test_delete_and_clear() -> None:
    cache: TTLCache[str, int] = TTLCache(_name())
    cache.set("a", 1)
    cache.set("b", 2)
    cache.delete("a")
    cache.delete("missing")
    assert cache.get("a") is None
    cache.clear()
    assert len(cache) == 0


def test_rejects_an_empty_bound() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        TTLCache(_name(), maxsize=0)


def test_hits_and_misses_reach_prometheus() -> None:
    name = _name()
    cache: TTLCache[str, int] = TTLCache(name)
    cache.set("a", 1)
    cache.get("a")
    cache.get("a")
    cache.get("b")
    assert (
        REGISTRY.get_sample_value("nexus_cache_requests_total", {"cache": name, "result": "hit"})
        == 2
    )
    assert (
        REGISTRY.get_sample_value("nexus_cache_requests_total", {"cache": name, "result": "miss"})
        == 1
    )
    assert (cache.hits, cache.misses) == (2, 1)


def test_contains_many_finds_what_get_finds_and_counts_each_key(clock: FakeClock) -> None:
    name = _name()
    cache: TTLCache[str, int] = TTLCache(name, maxsize=3, ttl_s=10)
    cache.set("a", 1)
    cache.set("b", 2, ttl_s=1)
    cache.set("c", 3)
    clock.now += 5  # "b" expired
    assert cache.contains_many(["a", "b", "x", "c", "a"]) == [True, False, False, True, True]
    assert (cache.hits, cache.misses) == (3, 2)
    hits = {"cache": name, "result": "hit"}
    assert REGISTRY.get_sample_value("nexus_cache_requests_total", hits) == 3
    cache.set("d", 4)  # "a" and "c" were refreshed by the look-up: "b" is gone, nothing evicted
    assert cache.contains_many(["a", "c", "d"]) == [True, True, True]


async def test_concurrent_loads_of_one_key_call_the_loader_once() -> None:
    cache: TTLCache[str, int] = TTLCache(_name())
    calls = 0
    release = asyncio.Event()

    async def load() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    waiters = [asyncio.create_task(cache.get_or_load("k", load)) for _ in range(10)]
    await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(*waiters) == [42] * 10
    assert calls == 1
    assert await cache.get_or_load("k", load) == 42
    assert calls == 1


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache: TTLCache[str, int] = TTLCache(_name())

    async def fail() -> int:
        await asyncio.sleep(0.01)
        raise RuntimeError("backend down")

    results = await asyncio.gather(
        *(cache.get_or_load("k", fail) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)

    async def ok() -> int:
        return 7

    assert await cache.get_or_load("k", ok) == 7


async def test_none_values_are_cached_by_get_or_load() -> None:
    cache: TTLCache[str, int | None] = TTLCache(_name())
    calls = 0

    async def load() -> int | None:
        nonlocal calls
        calls += 1
        return None

    assert await cache.get_or_load("k", load) is None
    assert await cache.get_or_load("k", load) is None
    assert calls == 1


async def test_delete_during_a_load_keeps_its_result_out() -> None:
    cache: TTLCache[str, str] = TTLCache(_name())
    release = asyncio.Event()

    async def stale() -> str:
        await release.wait()
        return "stale"

    waiter = asyncio.create_task(cache.get_or_load("k", stale))
    await asyncio.sleep(0.01)
    cache.delete("k")  # the record changed while it was being read
    release.set()
    assert await waiter == "stale"
    assert cache.get("k") is None


async def test_a_cancelled_waiter_does_not_cancel_the_load() -> None:
    cache: TTLCache[str, int] = TTLCache(_name())
    release = asyncio.Event()

    async def load() -> int:
        await release.wait()
        return 1

    first = asyncio.create_task(cache.get_or_load("k", load))
    second = asyncio.create_task(cache.get_or_load("k", load))
    await asyncio.sleep(0.01)
    first.cancel()
    release.set()
    assert await second == 1
    assert cache.get("k") == 1
