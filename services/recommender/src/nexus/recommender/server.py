"""Builds the recommender service: engine, training operations and servicers on the shared host."""

from __future__ import annotations

from nexus.api.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.recommender.engine import RecommenderEngine
from nexus.recommender.servicer import RecommenderServicer, training
from nexus.recommender.serving import FRAMEWORK
from nexus.recommender.settings import RecommenderSettings

NAME = "recommender"


async def create(settings: RecommenderSettings, common: NexusSettings) -> ServiceHost:
    """Opens, wires and starts the service; it is SERVING when this returns (after the
    interactions stream was replayed and the promoted models loaded)."""
    host = ServiceHost(NAME, settings, common)
    await host.open()
    registry = await host.registry(upload_frameworks=[FRAMEWORK])
    engine = RecommenderEngine(registry, host.bus, settings, host.executor)
    operations = host.operations(training(engine))
    host.add_servicer(
        pb_grpc.add_RecommenderServiceServicer_to_server,
        RecommenderServicer(engine, operations),
        "nexus.recommender.v1.RecommenderService",
    )
    await host.start()
    for part in (engine, operations):  # operations run trainings: engine first
        await host.manage(part)
    await engine.warm()
    await host.set_serving()
    return host
