"""One way to connect to NATS: reconnecting forever, with logged state changes; one way to close."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from nexus.common.errors import Unavailable
from nexus.common.settings import NexusSettings

log = logging.getLogger(__name__)

OnState = Callable[[bool], Awaitable[None]]
"""Awaited with False when the connection drops (or closes), True when it is back."""

_WHITESPACE = re.compile(r"\s")  # what str.isspace() calls whitespace
_UNSAFE_SUBJECT = re.compile(r"[ \t\r\n]")  # what nats-py's publish refuses (no command injection)
_BYTES_WHITESPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips


class NexusClient(Client):
    """nats-py's client, with a faster parser of message headers.

    Every JetStream message of a stream consumer carries headers (the CloudEvents envelope, the
    trace context): nats-py decodes each line's parts one by one and tests each character of
    each name with a generator over `str.isspace`, which was the largest single cost of
    consuming a metric point in profiles of the anomaly stream (docs/adr/0021). This parser
    decodes the block once and tests names with a regular expression, for the same result;
    tests check that it agrees with nats-py's own.
    """

    async def publish_empty(self, subjects: Sequence[str]) -> None:
        """Publishes an empty message (no reply, no headers) on each subject, as one write.

        What acknowledging a batch of JetStream messages is (each on its own reply subject: an
        AckAll would also acknowledge the messages a shared consumer gave other replicas);
        `publish` once per message cost a validation, a command and a flush request each.
        The same rules as `publish`: subjects must be valid, and while reconnecting the
        commands are buffered within the pending limit.

        Raises:
            ConnectionClosedError, ConnectionDrainingError, OutboundBufferLimitError,
            BadSubjectError: As `publish` would.
        """
        if not subjects:
            return
        if not all(subjects) or _UNSAFE_SUBJECT.search("".join(subjects)):
            raise nats.errors.BadSubjectError
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if self.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        command = "".join(f"PUB {subject} 0\r\n\r\n" for subject in subjects).encode()
        if not self.is_connected and (
            self._max_pending_size <= 0
            or len(command) + self._pending_data_size > self._max_pending_size
        ):
            raise nats.errors.OutboundBufferLimitError
        self.stats["out_msgs"] += len(subjects)
        await self._send_command(command)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        # One decode of the block: CR and LF cannot be part of a multi-byte character, so the
        # lines and their values decode as nats-py decodes each on its own.
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = _KEYS.get(name) or _header_key(name)  # a skipped or empty name: checked again
            if key is not None:
                out[key] = value.strip(_BYTES_WHITESPACE)
        return out


_KEYS: dict[str, str | None] = {}
"""Header names as they came, to what `_header_key` made of them: messages of a stream carry the
same few names, and a lookup is cheaper than the checks (bounded: names come from the network)."""
_KEYS_LIMIT = 1024


def _header_key(name: str) -> str | None:
    """The header name as nats-py reads it, None when it skips the header (a name not ASCII, or
    with whitespace inside); remembered while `_KEYS` has room."""
    stripped = name.strip(_BYTES_WHITESPACE)
    key = stripped if stripped.isascii() and not _WHITESPACE.search(stripped) else None
    if len(_KEYS) < _KEYS_LIMIT:
        _KEYS[name] = key
    return key


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
        client = NexusClient()
        options: dict[str, Any] = {
            "servers": [s.strip() for s in settings.nats_url.split(",")],
            "name": name,
            "connect_timeout": settings.nats_connect_timeout_s,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "allow_reconnect": True,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
            "error_cb": on_error,
        }
        connecting = client.connect(**options)
        await asyncio.wait_for(connecting, settings.nats_connect_timeout_s)
        return client
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
