"""Keeps the platform's children running: a child that exits is restarted, with backoff.

Policy only: what a child is and how it restarts is the platform's business (`Supervised`).
NATS comes first: while it is down, no other child is restarted (a service would only fail to
connect and burn its next delay).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from nexus.common.errors import NexusError

log = logging.getLogger(__name__)

POLL_S = 0.1
"""How often a child is checked (a wait on the process, no system call to speak of)."""


@dataclass(frozen=True)
class Supervised:
    """One child as the supervisor sees it.

    Attributes:
        name: Its name in reports ("nats-server", "anomaly", "gateway").
        running: Whether its process is alive.
        returncode: Its exit status once it exited (negative: the killing signal).
        restart: Starts it again and returns once it is ready; raises `NexusError` when it
            could not be started (the child is then not running).
        is_nats: Whether it is the NATS server, which the other children need.
    """

    name: str
    running: Callable[[], bool]
    returncode: Callable[[], int | None]
    restart: Callable[[], Awaitable[None]]
    is_nats: bool = False


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts: `first_s`, doubled for each crash in a row, at most `max_s`;
    a child that ran `reset_s` before it exited starts over at `first_s`."""

    first_s: float = 0.5
    max_s: float = 30.0
    reset_s: float = 30.0

    def delay(self, crashes_in_a_row: int) -> float:
        """The wait before the restart that follows the n-th crash in a row (n >= 1)."""
        return float(min(self.first_s * 2 ** (crashes_in_a_row - 1), self.max_s))


def describe_exit(returncode: int | None) -> str:
    """ "killed by SIGKILL", "exit code 1", or "stopped" (no status)."""
    if returncode is None:
        return "stopped"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    """Restarts the children that exit until cancelled.

    Args:
        children: What to keep running.
        backoff: Delays between restarts.
        on_restart: Called after each restart attempt (the platform rewrites its run file).
    """

    def __init__(
        self,
        children: Sequence[Supervised],
        backoff: Backoff,
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        self._children = list(children)
        self._backoff = backoff
        self._on_restart = on_restart
        self._nats_up = asyncio.Event()
        self._nats_up.set()

    async def run(self) -> None:
        """Watches every child (returns only when cancelled)."""
        await asyncio.gather(*(self._keep(child) for child in self._children))

    async def _keep(self, child: Supervised) -> None:
        crashes, started = 0, time.monotonic()
        while True:
            await _until_exit(child)
            exited = time.monotonic()
            crashes = 1 if exited - started >= self._backoff.reset_s else crashes + 1
            delay = self._backoff.delay(crashes)
            if child.is_nats:
                self._nats_up.clear()
            status = describe_exit(child.returncode())
            log.warning(
                "%s exited (%s); restarting in %.1fs",
                child.name,
                status,
                delay,
                extra={"child": child.name, "status": status, "delay_s": delay},
            )
            await asyncio.sleep(delay)
            if not child.is_nats:
                await self._nats_up.wait()
            started = time.monotonic()
            if await self._restart(child):
                down_s = time.monotonic() - exited
                log.warning(
                    "%s is back, %.1fs after it exited",
                    child.name,
                    down_s,
                    extra={"child": child.name, "down_s": round(down_s, 3)},
                )

    async def _restart(self, child: Supervised) -> bool:
        try:
            await child.restart()
        except NexusError as err:
            log.error("%s did not restart: %s", child.name, err, extra={"child": child.name})
            return False
        finally:
            self._on_restart()
        if child.is_nats:
            self._nats_up.set()
        return True


async def _until_exit(child: Supervised) -> None:
    # A process to poll: there is no event to await.
    while child.running():  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
