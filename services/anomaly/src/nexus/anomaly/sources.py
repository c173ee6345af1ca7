"""Bindings of metric sources to trained detectors, shared by every replica.

Stored in the KV bucket `nexus_anomaly_sources` (key = source); each replica mirrors the bucket
in memory through a KV watch, so the stream processor looks a binding up without a round trip
and a binding made on one replica applies on all of them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nexus.common.errors import InvalidArgument, NotFound
from nexus.common.registry import ModelRegistry

BUCKET = "nexus_anomaly_sources"
SOURCE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
DEFAULT_ALIAS = "production"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binding:
    """A source scored by a trained detector (through an alias)."""

    source: str
    detector: str
    alias: str
    created: datetime


def check_source(source: str, field: str = "source") -> str:
    """A source name usable as a NATS subject token."""
    if not SOURCE_NAME.match(source):
        raise InvalidArgument.for_field(field, "must be 1-128 letters, digits, '-' or '_'")
    return source


class SourceBindings:
    """The bindings, in KV and mirrored in memory."""

    def __init__(self, js: JetStreamContext, registry: ModelRegistry) -> None:
        self._js = js
        self._registry = registry
        self._kv: KeyValue | None = None
        self._mirror: dict[str, Binding] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Creates or binds the bucket and mirrors it (returns once the mirror is current)."""
        self._kv = await self._js.create_key_value(bucket=BUCKET, history=1)
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._follow(ready))
        await ready.wait()

    async def stop(self) -> None:
        """Stops mirroring."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def get(self, source: str) -> Binding | None:
        """The binding of a source, from the mirror."""
        return self._mirror.get(source)

    def list(self) -> list[Binding]:
        """Every binding, by source."""
        return [self._mirror[s] for s in sorted(self._mirror)]

    async def bind(self, source: str, detector: str, alias: str = "") -> Binding:
        """Binds (or rebinds) a source to a detector; NotFound if there is no such detector."""
        await self._registry.get_model(detector)
        binding = Binding(check_source(source), detector, alias or DEFAULT_ALIAS, datetime.now(UTC))
        record = {
            "detector": binding.detector,
            "alias": binding.alias,
            "created": binding.created.isoformat(),
        }
        await self._bucket().put(source, json.dumps(record).encode())
        self._mirror[source] = binding
        return binding

    async def unbind(self, source: str) -> None:
        """Removes a source's binding; NotFound if it has none."""
        try:
            await self._bucket().get(check_source(source))
        except KeyNotFoundError as err:
            raise NotFound(f"source {source!r} is not bound") from err
        await self._bucket().delete(source)
        self._mirror.pop(source, None)

    async def _follow(self, ready: asyncio.Event) -> None:
        watcher = await self._bucket().watchall()
        async for entry in watcher:
            if entry is None:  # the end of the initial values
                ready.set()
                continue
            self._apply(entry.key, entry.value, entry.operation)
            if not ready.is_set() and entry.delta == 0:
                ready.set()

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in {"DEL", "PURGE"} or not value:
            self._mirror.pop(key, None)
            return
        try:
            record = json.loads(value)
            created = datetime.fromisoformat(record["created"])
            self._mirror[key] = Binding(key, record["detector"], record["alias"], created)
        except (ValueError, KeyError):
            log.error("ignoring a malformed binding for source %s", key)

    def _bucket(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv
