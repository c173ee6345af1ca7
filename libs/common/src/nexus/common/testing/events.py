"""Test support for events: a handler that records what it handled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic

from nexus.common.events import Event
from nexus.common.events._envelope import M


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
