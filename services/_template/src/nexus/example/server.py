"""Builds the example service: its parts and servicers on the shared host."""

from __future__ import annotations

from nexus.api.example.v1 import example_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.example.counting import WordCounter
from nexus.example.servicer import ExampleServicer
from nexus.example.settings import ExampleSettings

NAME = "example"


async def create(settings: ExampleSettings, common: NexusSettings) -> ServiceHost:
    """Opens, wires and starts the service; it is SERVING when this returns.

    Parts with a start and a stop go through `host.manage(...)`, which stops them at shutdown;
    CPU-heavy work runs on `host.executor`.
    """
    host = ServiceHost(NAME, settings, common)
    await host.open()
    await host.registry()  # serves nexus.models.v1.ModelRegistryService for this service
    host.add_servicer(
        pb_grpc.add_ExampleServiceServicer_to_server,
        ExampleServicer(WordCounter(settings, host.executor)),
        "nexus.example.v1.ExampleService",
    )
    await host.start()
    await host.set_serving()
    return host

