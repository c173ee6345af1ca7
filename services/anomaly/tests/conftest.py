"""Fixtures: a real anomaly service (gRPC on a free port, real NATS), a client with a real key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from anomaly_testing import Client, StartHost, make_key

from nexus.anomaly.server import create
from nexus.anomaly.settings import AnomalySettings
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.services import StartService


@pytest.fixture
def start_anomaly(start_service: StartService) -> StartHost:
    """Starts anomaly service replicas (stopped at the end of the test)."""

    async def start(common: NexusSettings | None = None, **overrides: Any) -> ServiceHost:
        settings = AnomalySettings(grpc_port=0, **overrides)
        return await start_service(create, settings, common)

    return start


@pytest.fixture
async def anomaly(start_anomaly: StartHost) -> ServiceHost:
    """One running anomaly service."""
    return await start_anomaly()


@pytest.fixture
async def admin_key(nexus_settings: NexusSettings) -> str:
    """A key with every scope."""
    return await make_key(nexus_settings, "*")


@pytest.fixture
async def client(anomaly: ServiceHost, admin_key: str) -> AsyncIterator[Client]:
    """A client of the `anomaly` service with the admin key."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{anomaly.port}") as channel:
        yield Client(channel, admin_key)
