"""Fixtures: a real vision service (gRPC on a free port, real NATS), a client with a real key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from vision_testing import Client, client_of, small_settings

from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.vision.server import create


@pytest.fixture
async def vision(start_service: StartService) -> ServiceHost:
    """One running vision service with small limits."""
    return await start_service(create, small_settings())


@pytest.fixture
async def key(nexus_settings: NexusSettings) -> str:
    """A key of every scope."""
    return await make_key(nexus_settings, "*")


@pytest.fixture
async def client(vision: ServiceHost, key: str) -> AsyncIterator[Client]:
    """A client of the service with a key of every scope."""
    async with client_of(vision, key) as c:
        yield c
