"""The triggers of every workflow's latest version, followed from the workflows bucket: each
replica consumes the event triggers (shared durable consumers) and watches the cron triggers of
the version that `<name>.latest` names, and lets go of those of older versions."""

from __future__ import annotations

import logging

from nats.aio.client import Client

from nexus.common.auth import KeyStore
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
"""How often event triggers that could not start (no stream yet, NATS down) are tried again."""


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
        self._retry = Periodic("orchestrator-event-triggers", RETRY_S, self.events.retry_waiting)

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
        if entry.removed or not entry.value:
            await self.events.apply(name, None, None)
            self.schedules.forget(name)
            return
        stored = await self._workflows.get(name, int(entry.value))
        definition = self._workflows.definition(stored)
        self.schedules.apply(stored, definition)
        await self.events.apply(name, stored, definition)
