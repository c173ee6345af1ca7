"""Fixtures: a real recommender service (gRPC on a free port, real NATS), a client with a real
key."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from recommender_testing import Client

from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.recommender.server import create
from nexus.recommender.settings import RecommenderSettings


def small_settings() -> RecommenderSettings:
    """Small limits, so that the tests can cross them."""
    return RecommenderSettings(
        grpc_port=0,
        max_batch_interactions=200,
        max_batch_items=20,
        max_item_attributes=3,
        max_attribute_chars=16,
        max_results=50,
        max_weight=100,
        max_evaluate_interactions=500,
    )


@pytest.fixture
async def recommender(start_service: StartService) -> ServiceHost:
    """One running recommender service with small limits."""
    return await start_service(create, small_settings())


@contextlib.asynccontextmanager
async def client_of(host: ServiceHost, key: str) -> AsyncIterator[Client]:
    """A client of one replica."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        yield Client(channel, key)


@pytest.fixture
async def key(nexus_settings: NexusSettings) -> str:
    """A key of every scope."""
    return await make_key(nexus_settings, "*")


@pytest.fixture
async def client(recommender: ServiceHost, key: str) -> AsyncIterator[Client]:
    """A client of the service with a key of every scope."""
    async with client_of(recommender, key) as c:
        yield c
