"""MicroBatcher: batches form by size or time, run off the event loop, and settle every caller."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from nexus.common.batching import MicroBatcher
from nexus.common.errors import Unavailable


class Doubler:
    """A batch function that records its calls and the thread they ran on."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self._delay_s = delay_s

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        time.sleep(self._delay_s)
        return [2 * item for item in items]


async def test_concurrent_submits_share_calls() -> None:
    fn, sizes = Doubler(), list[int]()
    batcher = MicroBatcher(fn, max_batch_size=16, max_wait_ms=50, on_batch=sizes.append)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(64)))
    await batcher.close()
    assert results == [2 * i for i in range(64)]
    assert len(fn.batches) == 4  # 64 items, 16 per batch
    assert sizes == [16, 16, 16, 16]
    assert threading.get_ident() not in fn.threads  # never on the event loop


async def test_max_wait_flushes_a_lone_item() -> None:
    batcher = MicroBatcher(Doubler(), max_batch_size=100, max_wait_ms=20)
    started = time.monotonic()
    assert await batcher.submit(21) == 42
    assert 0.015 < time.monotonic() - started < 0.5
    await batcher.close()


async def test_items_arriving_while_a_batch_runs_form_the_next_batch() -> None:
    fn = Doubler(delay_s=0.1)
    batcher = MicroBatcher(fn, max_batch_size=100, max_wait_ms=1)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.03)  # the first batch runs now
    rest = await asyncio.gather(*(batcher.submit(i) for i in range(1, 11)))
    assert (await first, rest) == (0, [2 * i for i in range(1, 11)])
    await batcher.close()
    assert fn.batches == [[0], list(range(1, 11))]


async def test_an_error_fails_every_caller_of_its_batch() -> None:
    def broken(items: list[int]) -> list[int]:
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(broken, max_batch_size=4, max_wait_ms=10)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    await batcher.close()
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)


async def test_a_wrong_number_of_results_is_an_error() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(
        lambda items: items[:-1], max_batch_size=2, max_wait_ms=10
    )
    with pytest.raises(ValueError, match="returned 1 results for 2"):
        await asyncio.gather(batcher.submit(1), batcher.submit(2))
    await batcher.close()


async def test_close_flushes_pending_items_then_refuses_new_ones() -> None:
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch_size=100, max_wait_ms=10_000)
    waiting = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    await batcher.close()
    assert [await task for task in waiting] == [0, 2, 4]
    with pytest.raises(Unavailable):
        await batcher.submit(1)


async def test_a_cancelled_caller_is_left_out() -> None:
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch_size=100, max_wait_ms=30)
    gone = asyncio.create_task(batcher.submit(1))
    kept = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0.005)
    gone.cancel()
    assert await kept == 4
    await batcher.close()
    assert fn.batches == [[2]]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(Doubler(), max_batch_size=0, max_wait_ms=1)
