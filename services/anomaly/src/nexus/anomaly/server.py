"""Builds the anomaly service: engine, stream processor and servicers on the shared host."""

from __future__ import annotations

import sys

from nexus.anomaly.datasets import DatasetStore
from nexus.anomaly.engine import AnomalyEngine
from nexus.anomaly.servicer import AnomalyServicer, training
from nexus.anomaly.serving import FRAMEWORK
from nexus.anomaly.settings import AnomalySettings
from nexus.anomaly.sources import SourceBindings
from nexus.anomaly.streaming import StreamProcessor
from nexus.anomaly.streamstate import StreamStates
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings

NAME = "anomaly"
SWITCH_INTERVAL_S = 0.0005
"""How long a thread may keep the GIL while another waits for it (Python's default: 5 ms). The
streaming detectors learn on the executor in GIL-free calls, and after each the executor's thread
waits for the event loop's to let go: at 5 ms a time that tripled a batch's learning while the
loop parsed the next batch (docs/adr/0026-stream-throughput.md)."""


async def create(settings: AnomalySettings, common: NexusSettings) -> ServiceHost:
    """Opens, wires and starts the service; it is SERVING when this returns."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    host = ServiceHost(NAME, settings, common)
    await host.open()
    registry = await host.registry(upload_frameworks=[FRAMEWORK])
    js = host.nc.jetstream()
    engine = AnomalyEngine(
        registry, DatasetStore(js, max_bytes=settings.max_dataset_bytes), settings, host.executor
    )
    bindings = SourceBindings(host.nc, registry)
    states = StreamStates(
        host.nc,
        host.executor,
        consumer=settings.stream_durable,
        max_sources=settings.stream_max_sources,
        max_recent=settings.stream_recent_points,
        ttl_s=settings.stream_state_ttl_s,
    )
    stream = StreamProcessor(host.bus, engine, bindings, states, settings)
    operations = host.operations(training(engine))
    host.add_servicer(
        anomaly_service_pb2_grpc.add_AnomalyServiceServicer_to_server,
        AnomalyServicer(engine, bindings, stream, operations),
        "nexus.anomaly.v1.AnomalyService",
    )
    await host.start()
    for part in (engine, bindings, stream, operations):  # operations run training: engine first
        await host.manage(part)
    await engine.warm()
    await host.set_serving()
    return host
