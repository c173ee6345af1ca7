"""Builds the orchestrator: its stores, engine and servicer on the shared host."""

from __future__ import annotations

import logging

from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.auth import KeyStore, key_id_of, scopes_of_rpcs
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.orchestrator.engine.calls import Caller
from nexus.orchestrator.engine.engine import DURABLE, STREAM, Engine
from nexus.orchestrator.engine.store import RunStore
from nexus.orchestrator.queues import QueueGauges
from nexus.orchestrator.servicer import OrchestratorServicer
from nexus.orchestrator.settings import OrchestratorSettings
from nexus.orchestrator.triggers import EventStreams, Triggers
from nexus.orchestrator.workflows import WorkflowStore

NAME = "orchestrator"
log = logging.getLogger(__name__)


async def create(settings: OrchestratorSettings, common: NexusSettings) -> ServiceHost:
    """Opens, wires and starts the orchestrator; it is SERVING when this returns."""
    host = ServiceHost(NAME, settings, common)
    await host.open()
    await store_service_key(host.keys, settings.service_key.get_secret_value())
    streams = EventStreams(host.nc, own=frozenset({STREAM.name}))
    workflows = await host.manage(WorkflowStore(host.nc, check=streams.check))
    runs = await host.manage(RunStore(host.nc, settings.view_every_s))
    caller = Caller(settings.backends, settings.service_key.get_secret_value())
    engine = await host.manage(Engine(host.bus, runs, workflows, caller, settings, host.keys))
    triggers = Triggers(host.nc, host.bus, workflows, engine, host.keys, streams, settings)
    await host.manage(triggers)

    def queues() -> dict[str, str]:
        return {DURABLE: STREAM.name, **triggers.events.queues()}

    await host.manage(QueueGauges(host.bus.js, queues, settings.queue_sample_s))
    host.add_servicer(
        pb_grpc.add_OrchestratorServiceServicer_to_server,
        OrchestratorServicer(workflows, engine),
        "nexus.orchestrator.v1.OrchestratorService",
    )
    await host.start()
    await host.set_serving()
    return host


async def store_service_key(keys: KeyStore | None, raw_key: str) -> None:
    """Stores the orchestrator's own key (`NEXUS_ORCHESTRATOR_SERVICE_KEY`) when absent, as the
    gateway stores its bootstrap admin key, with the scopes of every RPC but the
    orchestrator's own (a workflow must not register workflows as this key).

    Raises:
        InvalidArgument: The key is not shaped like an API key.
        AlreadyExists: Another key with its id is stored.
    """
    if keys is None or not raw_key:
        return
    stored = await keys.ensure_key(raw_key, NAME, scopes_of_rpcs(excluding=[NAME]))
    key = await keys.get(key_id_of(raw_key) or "")
    log.info("service key %s %s", key.id, "stored" if stored else "already stored")
    if key.revoked:
        log.warning("the service key %s is revoked: every call step will be refused", key.id)
