"""A background task that does one thing every so often (timers, cron, retries)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
"""How long `stop` lets a turn in progress finish before cancelling it."""


class Periodic:
    """Awaits `action` every `interval_s` on the event loop until stopped; what it raises is
    logged, and the next turn goes on. Stopping lets a turn in progress finish (a cron tick
    fired is then also recorded), up to `STOP_GRACE_S`.

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
        self._acting = False
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is None:
            return
        if not self._acting:
            self._task.cancel()
        done, _ = await asyncio.wait({self._task}, timeout=STOP_GRACE_S)
        if not done:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._interval_s)
            self._acting = True
            try:
                await self._action()
            except Exception:  # the next turn tries again
                log.exception("%s failed; trying again in %g s", self._name, self._interval_s)
            finally:
                self._acting = False
