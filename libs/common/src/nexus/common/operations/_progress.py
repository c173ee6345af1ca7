"""What long work sees of the operation it runs: progress to report, cancellation to honour.

Domain code takes a `Progress` and calls `stage` between its steps (and `report` within a step,
per epoch say); both raise `OperationCancelled` once a cancel was asked for, which is how
cancellation stays cooperative: the work stops between steps, never in the middle of a write.
The same code runs outside an operation with `NO_PROGRESS`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


class OperationCancelled(Exception):
    """The operation was cancelled; raised at the work's next step."""


class Progress(Protocol):
    """Where long work reports how far it has come."""

    async def stage(self, stage: str, percent: float | None = None, message: str = "") -> None:
        """Starts step `stage` (at `percent` done, when known).

        Raises:
            OperationCancelled: When a cancel was asked for.
        """

    async def report(
        self,
        *,
        percent: float | None = None,
        metrics: Mapping[str, float] | None = None,
        eta_s: float | None = None,
        message: str | None = None,
    ) -> None:
        """Reports progress within a step: percent done, figures so far (merged with earlier
        ones), the time left when the work knows it better than the percent does.

        Raises:
            OperationCancelled: When a cancel was asked for.
        """


class _NoProgress:
    async def stage(self, stage: str, percent: float | None = None, message: str = "") -> None:
        return None

    async def report(
        self,
        *,
        percent: float | None = None,
        metrics: Mapping[str, float] | None = None,
        eta_s: float | None = None,
        message: str | None = None,
    ) -> None:
        return None


NO_PROGRESS: Progress = _NoProgress()
"""For work run outside an operation (a synchronous RPC): reports nothing, never cancelled."""

MIN_WRITE_INTERVAL_S = 0.2
"""Progress within a stage is stored at most this often; a new stage is stored at once."""


@dataclass
class Snapshot:
    """The progress to store."""

    stage: str = ""
    percent: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    eta_s: float = -1.0
    message: str = ""


Store = Callable[[Snapshot], Awaitable[None]]


class Tracker:
    """The `Progress` of one attempt: keeps what the work reported, stores it (at most every
    `MIN_WRITE_INTERVAL_S`, and at each heartbeat), and turns a cancel into
    `OperationCancelled` at the work's next call.

    Args:
        store: Writes a snapshot to the operation's record.
        clock: Monotonic seconds (for the ETA).
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._began = clock()
        self._written = float("-inf")
        self._eta_given = False
        self.snapshot = Snapshot()
        self.cancelled = asyncio.Event()

    def cancel(self) -> None:
        """Asks the work to stop at its next step."""
        self.cancelled.set()

    def check(self) -> None:
        """Raises `OperationCancelled` once a cancel was asked for."""
        if self.cancelled.is_set():
            raise OperationCancelled("cancelled")

    async def stage(self, stage: str, percent: float | None = None, message: str = "") -> None:
        """See `Progress.stage`."""
        self.check()
        self.snapshot.stage, self.snapshot.message = stage, message
        self._set_percent(percent)
        await self.flush()

    async def report(
        self,
        *,
        percent: float | None = None,
        metrics: Mapping[str, float] | None = None,
        eta_s: float | None = None,
        message: str | None = None,
    ) -> None:
        """See `Progress.report`."""
        self.check()
        self.snapshot.metrics.update({str(k): float(v) for k, v in (metrics or {}).items()})
        if message is not None:
            self.snapshot.message = message
        self._set_percent(percent)
        if eta_s is not None:
            self._eta_given, self.snapshot.eta_s = True, max(0.0, eta_s)
        if self._clock() - self._written >= MIN_WRITE_INTERVAL_S:
            await self.flush()

    async def flush(self) -> None:
        """Stores the progress now."""
        self._written = self._clock()
        await self._store(self.snapshot)

    def _set_percent(self, percent: float | None) -> None:
        if percent is None:
            return
        self.snapshot.percent = min(100.0, max(0.0, float(percent)))
        if not self._eta_given:
            self.snapshot.eta_s = estimate_eta(self._clock() - self._began, self.snapshot.percent)


def estimate_eta(elapsed_s: float, percent: float) -> float:
    """The time left if the rest goes as fast as what is done (-1: not known before 1 %)."""
    if percent < 1.0:
        return -1.0
    return elapsed_s * (100.0 - percent) / percent
