"""Builds the vision service: engine, training operations and servicers on the shared host."""

from __future__ import annotations

from nexus.api.vision.v1 import vision_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.vision.engine import VisionEngine
from nexus.vision.servicer import VisionServicer, training
from nexus.vision.serving import upload_hooks
from nexus.vision.settings import VisionSettings

NAME = "vision"


async def create(settings: VisionSettings, common: NexusSettings) -> ServiceHost:
    """Opens, wires and starts the service; it is SERVING when this returns (after the models
    that aliases route to were loaded and warmed)."""
    host = ServiceHost(NAME, settings, common)
    await host.open()
    registry = await host.registry(upload_hooks=upload_hooks(host.executor))
    engine = VisionEngine(registry, host.bus, settings, host.executor)
    operations = host.operations(training(engine))
    host.add_servicer(
        pb_grpc.add_VisionServiceServicer_to_server,
        VisionServicer(engine, operations),
        "nexus.vision.v1.VisionService",
    )
    await host.start()
    for part in (engine, operations):  # operations run trainings: engine first
        await host.manage(part)
    await engine.warm()
    await host.set_serving()
    return host
