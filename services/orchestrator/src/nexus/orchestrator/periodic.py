"""A background task that does one thing every so often (timers, cron, retries)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Awaits `action` every `interval_s` on the event loop until stopped; what it raises is
    logged, and the next turn goes on.

    Args:
        name: Names the task and its failures in the log.
        interval_s: The pause before each turn.
        action: One turn.
    """

    def __init__(self, name: str, interval_s: float, action: Callable[[], Awaitable[None]]):
        self._name = name
        self._interval_s = interval_s
        self._action = action
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self._action()
            except Exception:  # the next turn tries again
                log.exception("%s failed; trying again in %g s", self._name, self._interval_s)
