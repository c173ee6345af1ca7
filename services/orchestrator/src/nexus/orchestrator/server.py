"""Builds the orchestrator: its stores, engine and servicer on the shared host."""

from __future__ import annotations

from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.orchestrator.servicer import OrchestratorServicer
from nexus.orchestrator.settings import OrchestratorSettings
from nexus.orchestrator.workflows import WorkflowStore

NAME = "orchestrator"


async def create(settings: OrchestratorSettings, common: NexusSettings) -> ServiceHost:
    """Opens, wires and starts the orchestrator; it is SERVING when this returns."""
    host = ServiceHost(NAME, settings, common)
    await host.open()
    workflows = await host.manage(WorkflowStore(host.nc))
    host.add_servicer(
        pb_grpc.add_OrchestratorServiceServicer_to_server,
        OrchestratorServicer(workflows),
        "nexus.orchestrator.v1.OrchestratorService",
    )
    await host.start()
    await host.set_serving()
    return host
