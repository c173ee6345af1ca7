"""Fixtures: a real vision service (gRPC on a free port, real NATS), a client with a real key."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from vision_testing import Client, client_of, small_settings
from yolo_testing import Trained, train

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


@pytest.fixture(scope="session")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A yolo11n detector trained for 2 epochs on shapes (once per session)."""
    return train(tmp_path_factory.mktemp("detector"), "yolo11n.yaml")


@pytest.fixture(scope="session")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A yolo11n-seg trained for 2 epochs on shapes' outlines (once per session)."""
    return train(tmp_path_factory.mktemp("segmenter"), "yolo11n-seg.yaml", segment=True)
