"""Bindings of metric sources to a trained detector, a streaming configuration, or both, shared
by every replica.

Stored in the KV bucket `nexus_anomaly_sources` (key = source); each replica mirrors the bucket
in memory with a `KvFollower` (which resumes after a NATS restart), so the stream processor
looks a binding up without a round trip and a binding made on one replica applies on all of
them at once. A source without a binding, or whose binding has no streaming configuration, gets
the default streaming detector.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.js import api
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nexus.anomaly.streamconfig import StreamingConfig, config_from_json
from nexus.common.errors import InvalidArgument, NotFound
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
    """A source scored by a trained detector (through an alias), by a streaming detector of its
    choice, or both.

    Attributes:
        source: The source.
        detector: The trained detector (model) name; empty for none.
        alias: The alias it resolves; empty without a detector.
        created: When it was bound.
        streaming: The source's streaming configuration; None for the default.
    """

    source: str
    detector: str
    alias: str
    created: datetime
    streaming: StreamingConfig | None = None


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

    async def bind(
        self,
        source: str,
        detector: str = "",
        alias: str = "",
        streaming: StreamingConfig | None = None,
    ) -> Binding:
        """Binds (or rebinds: the new binding replaces the old one) a source to a trained
        detector, a streaming configuration, or both.

        Raises:
            InvalidArgument: Neither is given, or an alias without a detector.
            NotFound: There is no such detector.
        """
        source = check_name(source, "source")
        if not detector and streaming is None:
            raise InvalidArgument.for_field(
                "detector", "give a detector, a streaming configuration, or both"
            )
        if alias and not detector:
            raise InvalidArgument.for_field("alias", "applies to a detector; none is given")
        if detector:
            await self._registry.get_model(check_name(detector, "detector"))
        binding = Binding(
            source,
            detector,
            (alias or DEFAULT_ALIAS) if detector else "",
            datetime.now(UTC),
            streaming,
        )
        await self._bucket().put(source, json.dumps(_record(binding)).encode())
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
            binding = _binding(entry.key, json.loads(entry.value))
        except (ValueError, KeyError, TypeError):
            log.error("ignoring a malformed binding for source %s", entry.key)
            return
        self._mirror[entry.key] = binding

    def _bucket(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv


def _record(binding: Binding) -> dict[str, Any]:
    record: dict[str, Any] = {
        "detector": binding.detector,
        "alias": binding.alias,
        "created": binding.created.isoformat(),
    }
    if binding.streaming is not None:
        record["streaming"] = binding.streaming.to_json()
    return record


def _binding(source: str, record: dict[str, Any]) -> Binding:
    """A stored binding; raises ValueError, KeyError or TypeError when malformed."""
    streaming = None
    if "streaming" in record:
        try:
            streaming = config_from_json(record["streaming"])
        except InvalidArgument as err:  # a kind or parameter this release no longer knows
            log.error(
                "source %s: its streaming configuration is void (%s); the default applies",
                source,
                err,
            )
    created = datetime.fromisoformat(record["created"])
    return Binding(source, record["detector"], record["alias"], created, streaming)
