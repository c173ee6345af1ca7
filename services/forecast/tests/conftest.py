"""Fixtures: a real forecast service (gRPC on a free port, real NATS), a client with a real key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import torch
from forecast_testing import Client

from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.forecast.server import create
from nexus.forecast.settings import ForecastSettings


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch thread, as a deployment beside other work sets with OMP_NUM_THREADS: on a loaded
    2-core machine torch's default threads contend (a network's training measured 8x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
async def forecast(start_service: StartService) -> ServiceHost:
    """One running forecast service with small limits."""
    settings = ForecastSettings(
        grpc_port=0,
        max_sync_series=20,
        max_series=200,
        max_horizon=200,
        max_dataset_bytes=200_000,
        max_chart_points=500,
    )
    return await start_service(create, settings)


@pytest.fixture
async def client(forecast: ServiceHost, nexus_settings: NexusSettings) -> AsyncIterator[Client]:
    """A client of the service with a key of every scope."""
    key = await make_key(nexus_settings, "*")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{forecast.port}") as channel:
        yield Client(channel, key)
