"""The vision service over real gRPC with a real NATS: health and auth."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus.common.server import ServiceHost


async def test_it_is_serving_with_its_registry(vision: ServiceHost) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{vision.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service=""))

    assert status.status == health_pb2.HealthCheckResponse.SERVING
