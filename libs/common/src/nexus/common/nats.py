"""One way to connect to NATS: reconnecting forever, with logged state changes; one way to close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
import nats.errors
from nats.aio.client import Client

from nexus.common.errors import Unavailable
from nexus.common.settings import NexusSettings

log = logging.getLogger(__name__)

OnState = Callable[[bool], Awaitable[None]]
"""Awaited with False when the connection drops (or closes), True when it is back."""


async def connect(settings: NexusSettings, name: str, *, on_state: OnState | None = None) -> Client:
    """Connects to NATS and keeps reconnecting (forever) after the first connection.

    Args:
        settings: Shared settings (URL, first-connect timeout).
        name: Client name shown by the server (the service's name).
        on_state: Told when the connection drops and when it is back (readiness follows it).

    Raises:
        Unavailable: When no server answers within the connect timeout.
    """

    async def on_disconnect() -> None:
        # Also called on a deliberate close; an unwanted one shows up in on_error too.
        log.info("nats disconnected", extra={"client": name})
        if on_state is not None:
            await on_state(False)

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"client": name})
        if on_state is not None:
            await on_state(True)

    async def on_error(err: Exception) -> None:
        log.warning("nats error: %s", err, extra={"client": name})

    try:
        # Reconnects are infinite, which nats-py applies to the first connection too: bound it.
        connecting = nats.connect(
            servers=[s.strip() for s in settings.nats_url.split(",")],
            name=name,
            connect_timeout=settings.nats_connect_timeout_s,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
        )
        return await asyncio.wait_for(connecting, settings.nats_connect_timeout_s)
    except Exception as err:  # nats raises several unrelated types for "no server"
        raise Unavailable(f"cannot connect to NATS at {settings.nats_url}") from err


async def close(nc: Client) -> None:
    """Closes a client at shutdown: drains it while connected (pending messages go out, handlers
    finish), else just closes it. Never raises: with the server down, a drain raises and a close
    fails to flush what was written meanwhile, which is lost either way."""
    if nc.is_closed:
        return
    if nc.is_connected:
        try:
            await nc.drain()
            return
        except (nats.errors.Error, TimeoutError, OSError) as err:
            log.warning("nats drain failed (%s); closing", err or type(err).__name__)
    try:
        await nc.close()
    except (nats.errors.Error, OSError) as err:
        log.warning("nats closed without flushing (%s)", err or type(err).__name__)
