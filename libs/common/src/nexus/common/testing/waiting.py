"""Waiting in tests for something another process or task makes true."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


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
