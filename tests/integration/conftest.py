"""The platform in one test process: real services (anomaly, llm) and real gateways in front of
them, on free ports, with real keys."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from anomaly_testing import make_key
from llm_service_testing import LlmStack, StartLlmStack
from llm_testing import build_tiny_model

from nexus.anomaly.server import create
from nexus.anomaly.settings import AnomalySettings
from nexus.common.auth import open_key_store
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.gateway import GatewayServer, GatewaySettings, build_app
from nexus.llm.server import create as create_llm
from nexus.llm.settings import LlmSettings


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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny local chat model (built here; nothing is downloaded)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
async def start_llm_stack(
    nexus_settings: NexusSettings, tmp_path: Path
) -> AsyncIterator[StartLlmStack]:
    """Starts llm services, each behind its own gateway (stopped at the end of the test).

    The factory takes the models YAML and GatewaySettings overrides.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def start(config: Path, **gateway: Any) -> LlmStack:
            cache = tmp_path / f"models-{uuid.uuid4().hex[:6]}"
            settings = LlmSettings(grpc_port=0, config_path=config, model_cache_dir=cache)
            host = await create_llm(settings, nexus_settings)
            stack.push_async_callback(host.stop)
            gateway.setdefault("rate_limit_per_minute", 0)
            backends = {"llm": f"127.0.0.1:{host.port}"}
            options = GatewaySettings(port=0, backends=backends, **gateway)
            keys = await stack.enter_async_context(open_key_store(nexus_settings, "test-llm-gw"))
            server = GatewayServer(build_app(options, keys=keys), options)
            url = await server.start()
            stack.push_async_callback(server.stop)
            return LlmStack(host, url)

        yield start
