"""The platform in one test process: a real anomaly service and a real gateway in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from anomaly_testing import make_key

from nexus.anomaly.server import create
from nexus.anomaly.settings import AnomalySettings
from nexus.common.auth import open_key_store
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.gateway import GatewayServer, GatewaySettings, build_app


@pytest.fixture
async def anomaly_service(nexus_settings: NexusSettings) -> AsyncIterator[ServiceHost]:
    """The anomaly service on a free port."""
    host = await create(AnomalySettings(grpc_port=0, stream_warmup=10), nexus_settings)
    yield host
    await host.stop()


@pytest.fixture
async def gateway_url(
    anomaly_service: ServiceHost, nexus_settings: NexusSettings
) -> AsyncIterator[str]:
    """A gateway with real auth in front of the anomaly service; yields its base URL."""
    settings = GatewaySettings(
        port=0, backends={"anomaly": f"127.0.0.1:{anomaly_service.port}"}, rate_limit_per_minute=0
    )
    async with open_key_store(nexus_settings, "test-gateway") as keys:
        server = GatewayServer(build_app(settings, keys=keys), settings)
        yield await server.start()
        await server.stop()


@pytest.fixture
async def http(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the gateway."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
async def operator_headers(nexus_settings: NexusSettings) -> dict[str, str]:
    """Headers with a key that may train, score and manage models."""
    key = await make_key(nexus_settings, "anomaly:*", "models:admin")
    return {"Authorization": f"Bearer {key}"}
