"""Builds the orchestrator: its stores, engine and servicer on the shared host."""

from __future__ import annotations

from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.orchestrator.engine.calls import Caller
from nexus.orchestrator.engine.engine import Engine
from nexus.orchestrator.engine.store import RunStore
from nexus.orchestrator.servicer import OrchestratorServicer
from nexus.orchestrator.settings import OrchestratorSettings
from nexus.orchestrator.workflows import WorkflowStore

NAME = "orchestrator"


async def create(settings: OrchestratorSettings, common: NexusSettings) -> ServiceHost:
    """Opens, wires and starts the orchestrator; it is SERVING when this returns."""
    host = ServiceHost(NAME, settings, common)
    await host.open()
    workflows = await host.manage(WorkflowStore(host.nc))
    runs = await host.manage(RunStore(host.nc))
    caller = Caller(settings.backends, settings.service_key.get_secret_value())
    engine = await host.manage(Engine(host.bus, runs, workflows, caller, settings, host.keys))
    host.add_servicer(
        pb_grpc.add_OrchestratorServiceServicer_to_server,
        OrchestratorServicer(workflows, engine),
        "nexus.orchestrator.v1.OrchestratorService",
    )
    await host.start()
    await host.set_serving()
    return host
