"""Bindings of metric sources to trained detectors, shared by every replica.

Stored in the KV bucket `nexus_anomaly_sources` (key = source); each replica mirrors the bucket
in memory with a `KvFollower` (which resumes after a NATS restart), so the stream processor
looks a binding up without a round trip and a binding made on one replica applies on all of
them at once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js import api
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nexus.common.errors import NotFound
from nexus.common.kv import KvEntry, KvFollower, open_key_value
from nexus.common.names import check_name
from nexus.common.registry import ModelRegistry

BUCKET = "nexus_anomaly_sources"
DEFAULT_ALIAS = "production"

log = logging.getLogger(__name__)

_BUCKET_CONFIG = api.KeyValueConfig(
    bucket=BUCKET, description="Nexus anomaly: metric sources and their detectors", history=1
)


@dataclass(frozen=True)
class Binding:
    """A source scored by a trained detector (through an alias)."""

    source: str
    detector: str
    alias: str
    created: datetime


class SourceBindings:
    """The bindings, in KV and mirrored in memory."""

    def __init__(self, nc: Client, registry: ModelRegistry) -> None:
        self._nc = nc
        self._registry = registry
        self._kv: KeyValue | None = None
        self._mirror: dict[str, Binding] = {}
        self._follower = KvFollower(nc, BUCKET, self._apply)

    async def start(self) -> None:
        """Creates or binds the bucket and mirrors it (returns once the mirror is current)."""
        self._kv = await open_key_value(self._nc.jetstream(), _BUCKET_CONFIG)
        await self._follower.start()

    async def stop(self) -> None:
        """Stops mirroring."""
        await self._follower.stop()

    def get(self, source: str) -> Binding | None:
        """The binding of a source, from the mirror."""
        return self._mirror.get(source)

    def list(self) -> list[Binding]:
        """Every binding, by source."""
        return [self._mirror[s] for s in sorted(self._mirror)]

    async def bind(self, source: str, detector: str, alias: str = "") -> Binding:
        """Binds (or rebinds) a source to a detector; NotFound if there is no such detector."""
        await self._registry.get_model(detector)
        binding = Binding(
            check_name(source, "source"), detector, alias or DEFAULT_ALIAS, datetime.now(UTC)
        )
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
            await self._bucket().get(check_name(source, "source"))
        except KeyNotFoundError as err:
            raise NotFound(f"source {source!r} is not bound") from err
        await self._bucket().delete(source)
        self._mirror.pop(source, None)

    async def _apply(self, entry: KvEntry) -> None:
        if entry.removed or not entry.value:
            self._mirror.pop(entry.key, None)
            return
        try:
            record = json.loads(entry.value)
            created = datetime.fromisoformat(record["created"])
            binding = Binding(entry.key, record["detector"], record["alias"], created)
        except (ValueError, KeyError):
            log.error("ignoring a malformed binding for source %s", entry.key)
            return
        self._mirror[entry.key] = binding

    def _bucket(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv
