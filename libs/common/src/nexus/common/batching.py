"""Micro-batching: many concurrent requests, one call of a batched model function.

A model usually scores 64 rows in little more time than one. `MicroBatcher` gathers the items
that callers submit until `max_batch_size` are waiting or `max_wait_ms` passed since the first of
them arrived, whichever comes first, runs the batch function in an executor (never on the event
loop), and hands each caller its own result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from nexus.common.errors import Unavailable

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float = field(default=0.0)


class _Closed:
    """Queued by close(): no item comes after it."""


_CLOSED = _Closed()


class MicroBatcher(Generic[T, R]):
    """Batches concurrent `submit` calls into calls of `fn`.

    Args:
        fn: Maps a batch of items to their results, in order and of the same length. It runs in
            `executor`, so it may block (numpy, torch, onnxruntime release the GIL).
        max_batch_size: Most items per call of `fn`.
        max_wait_ms: Longest time the first item of a batch waits for company.
        executor: Where `fn` runs; None uses the event loop's default thread pool.
        name: Shown in logs (and by whoever wires metrics).
        on_batch: Called with the size of each batch as it starts, for a histogram.
        max_concurrent_batches: Batches running at once. Keep 1 for a model that uses all cores
            or a GPU by itself; while it runs, the next batch fills up.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        executor: concurrent.futures.Executor | None = None,
        name: str = "",
        on_batch: Callable[[int], None] | None = None,
        max_concurrent_batches: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or max_concurrent_batches < 1:
            raise ValueError("max_batch_size and max_concurrent_batches >= 1, max_wait_ms >= 0")
        self._fn = fn
        self._max_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000
        self._executor = executor
        self.name = name
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[T, R] | _Closed] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._running: set[asyncio.Task[None]] = set()
        self._collector: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, item: T) -> R:
        """Adds `item` to the next batch and waits for its result.

        Raises:
            Unavailable: When the batcher is closed.
            Exception: Whatever `fn` raised for the batch that held `item`.
        """
        if self._closed:
            raise Unavailable(f"batcher {self.name} is closed")
        loop = asyncio.get_running_loop()
        if self._collector is None:
            self._collector = loop.create_task(self._collect(), name=f"batcher-{self.name}")
        pending: _Pending[T, R] = _Pending(item, loop.create_future(), loop.time())
        self._queue.put_nowait(pending)
        return await pending.future

    async def close(self) -> None:
        """Refuses new items, runs every item already submitted, and waits for their batches."""
        if self._closed:
            return
        self._closed = True
        if self._collector is None:
            return
        self._queue.put_nowait(_CLOSED)
        await self._collector
        if self._running:
            await asyncio.wait(self._running)

    async def _collect(self) -> None:
        while True:
            first = await self._queue.get()
            if isinstance(first, _Closed):
                return
            batch = [first]
            closing = await self._gather(batch, wait=True)
            await self._slots.acquire()  # while earlier batches run, more items queue up...
            closing = closing or await self._gather(batch, wait=False)  # ...and join this one
            self._start(batch)
            if closing:
                return

    async def _gather(self, batch: list[_Pending[T, R]], *, wait: bool) -> bool:
        """Adds queued items to `batch` until it is full or no item comes before the wait of its
        first item is over (at once unless `wait`). Returns whether close() was queued."""
        deadline = batch[0].arrived + self._max_wait_s if wait else 0.0
        while len(batch) < self._max_size:
            pending = await self._next(deadline)
            if pending is None:
                return False
            if isinstance(pending, _Closed):
                return True
            batch.append(pending)
        return False

    async def _next(self, deadline: float) -> _Pending[T, R] | _Closed | None:
        """The next queued entry, or None when none comes before `deadline` (loop time)."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        timeout = deadline - asyncio.get_running_loop().time()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    def _start(self, batch: list[_Pending[T, R]]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        try:
            live = [p for p in batch if not p.future.done()]  # skip callers that gave up
            if live:
                await self._call(live)
        finally:
            self._slots.release()

    async def _call(self, batch: list[_Pending[T, R]]) -> None:
        if self._on_batch is not None:
            try:
                self._on_batch(len(batch))
            except Exception:  # a metrics hook must never strand the callers
                log.exception("on_batch of batcher %s failed", self.name)
        items = [p.item for p in batch]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._fn, items)
            if len(results) != len(items):
                raise ValueError(f"batch fn returned {len(results)} results for {len(items)}")
        except Exception as err:
            log.warning("batch of %d in %s failed: %r", len(items), self.name, err)
            _settle(batch, error=err)
            return
        _settle(batch, results=results)


def _settle(
    batch: list[_Pending[T, R]], *, results: list[R] | None = None, error: Exception | None = None
) -> None:
    """Resolves each caller's future, skipping callers that were cancelled meanwhile."""
    for index, pending in enumerate(batch):
        if pending.future.done():
            continue
        if error is not None:
            pending.future.set_exception(error)
        else:
            assert results is not None
            pending.future.set_result(results[index])
