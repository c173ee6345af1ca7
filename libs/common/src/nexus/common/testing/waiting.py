"""Waiting in tests for something another process or task makes true."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 30.0, poll_s: float = 0.05
) -> None:
    """Waits until `check()` (a plain or an async function) holds; fails after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        held = check()
        if await held if inspect.isawaitable(held) else held:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(poll_s)


def until(check: Callable[[], T], timeout_s: float = 30.0, poll_s: float = 0.05) -> T:
    """Blocks until `check()` returns something true (tests that drive other processes from
    plain functions); returns it, or fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(poll_s)
    return result
