"""The triggers of every workflow's latest version, followed from the workflows bucket: each
replica consumes the event triggers (shared durable consumers) and watches the cron triggers of
the version that `<name>.latest` names, and lets go of those of older versions."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.errors import Error as NatsError

from nexus.common.auth import KeyStore
from nexus.common.errors import NexusError
from nexus.common.events import EventBus
from nexus.common.kv import KvEntry, KvFollower
from nexus.orchestrator.engine.engine import Engine
from nexus.orchestrator.periodic import Periodic
from nexus.orchestrator.settings import OrchestratorSettings
from nexus.orchestrator.triggers.cron import Schedules
from nexus.orchestrator.triggers.events import EventTriggers
from nexus.orchestrator.triggers.firing import Firing
from nexus.orchestrator.triggers.streams import EventStreams
from nexus.orchestrator.workflows import BUCKET, LATEST, WorkflowStore

log = logging.getLogger(__name__)

RETRY_S = 2.0
"""How often triggers that could not start (no stream yet, NATS down) are tried again."""


class Triggers:
    """Every trigger of the deployment, as seen by this replica.

    Args:
        nc: The NATS connection.
        bus: The event bus.
        workflows: The registered workflows.
        engine: Starts runs.
        keys: The API keys (None: auth is off).
        streams: Finds the stream of each event trigger.
        settings: Concurrency and timings.
    """

    def __init__(
        self,
        nc: Client,
        bus: EventBus,
        workflows: WorkflowStore,
        engine: Engine,
        keys: KeyStore | None,
        streams: EventStreams,
        settings: OrchestratorSettings,
    ) -> None:
        firing = Firing(engine, keys)
        self._workflows = workflows
        self.events = EventTriggers(bus, workflows, streams, firing, settings)
        self.schedules = Schedules(nc, firing)
        self._follower = KvFollower(nc, BUCKET, self._on_latest, keys=f"*.{LATEST}")
        self._retry = Periodic("orchestrator-triggers", RETRY_S, self._apply_pending)
        self._latest: dict[str, int] = {}  # workflow -> its latest version (0: none)
        self._pending: dict[str, int] = {}  # workflow -> its latest version, not applied yet
        self._applying = asyncio.Lock()  # one change at a time, in the order versions came

    async def start(self) -> None:
        """Starts the triggers of every workflow's latest version, and follows new versions."""
        await self.schedules.start()
        await self._follower.start()
        self._retry.start()

    async def stop(self) -> None:
        await self._retry.stop()
        await self._follower.stop()
        await self.schedules.stop()
        await self.events.stop()

    async def _on_latest(self, entry: KvEntry) -> None:
        name = entry.key.removesuffix(f".{LATEST}")
        self._latest[name] = 0 if entry.removed or not entry.value else int(entry.value)
        async with self._applying:
            await self._apply(name)

    async def _apply(self, name: str) -> None:
        """Runs the triggers of workflow `name`'s latest version (none when 0); when that
        fails (no stream holds a subject yet, NATS does not answer), tries again every few
        seconds, logging it once per version."""
        version = self._latest[name]
        try:
            if not version:
                self.schedules.forget(name)
                await self.events.apply(name, None, None)
            else:
                stored = await self._workflows.get(name, version)
                definition = self._workflows.definition(stored)
                self.schedules.apply(stored, definition)
                await self.events.apply(name, stored, definition)
        except (NexusError, NatsError, TimeoutError) as err:
            if self._pending.get(name) != version:
                log.warning("triggers of %s v%d wait (%s); retrying", name, version, err)
            self._pending[name] = version
            return
        self._pending.pop(name, None)

    async def _apply_pending(self) -> None:
        async with self._applying:
            for name in list(self._pending):
                await self._apply(name)
