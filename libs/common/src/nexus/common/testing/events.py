"""Test support for events: a recording handler, and waiting for a condition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic

from nexus.common.events import Event
from nexus.common.events._envelope import M


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Waits until `check()` holds; fails the test after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class Recorder(Generic[M]):
    """A handler that records the events it handled and fails on demand.

    Args:
        fail: Whether to raise (RuntimeError "handler failed on purpose") for an event.
    """

    def __init__(self, fail: Callable[[Event[M]], bool] = lambda _: False) -> None:
        self.events: list[Event[M]] = []
        self.calls = 0
        self._fail = fail

    async def __call__(self, event: Event[M]) -> None:
        self.calls += 1
        if self._fail(event):
            raise RuntimeError("handler failed on purpose")
        self.events.append(event)

    @property
    def ids(self) -> list[str]:
        """Ids of the events handled, in order."""
        return [e.id for e in self.events]
