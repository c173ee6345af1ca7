"""Builds the forecast service: engine, fit operations and servicers on the shared host."""

from __future__ import annotations

from nexus.api.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.forecast.datasets import DatasetStore
from nexus.forecast.engine import ForecastEngine
from nexus.forecast.servicer import ForecastServicer, fitting, tuning
from nexus.forecast.serving import FRAMEWORK
from nexus.forecast.settings import ForecastSettings

NAME = "forecast"


async def create(settings: ForecastSettings, common: NexusSettings) -> ServiceHost:
    """Opens, wires and starts the service; it is SERVING when this returns."""
    host = ServiceHost(NAME, settings, common)
    await host.open()
    registry = await host.registry(upload_frameworks=[FRAMEWORK])
    engine = ForecastEngine(
        registry, DatasetStore(host.nc.jetstream()), host.bus, settings, host.executor
    )
    operations = host.operations(fitting(engine), tuning(engine))
    host.add_servicer(
        pb_grpc.add_ForecastServiceServicer_to_server,
        ForecastServicer(engine, operations),
        "nexus.forecast.v1.ForecastService",
    )
    await host.start()
    for part in (engine, operations):  # operations run fits: engine first
        await host.manage(part)
    await engine.warm()
    await host.set_serving()
    return host
