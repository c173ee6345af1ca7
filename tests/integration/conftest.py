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
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.services import StartService, running_services
from nexus.gateway.testing import running_gateway
from nexus.llm.server import create as create_llm
from nexus.llm.settings import LlmSettings


@pytest.fixture
async def anomaly_service(start_service: StartService) -> ServiceHost:
    """The anomaly service on a free port."""
    return await start_service(create, AnomalySettings(grpc_port=0))


@pytest.fixture
async def gateway_url(
    anomaly_service: ServiceHost, nexus_settings: NexusSettings
) -> AsyncIterator[str]:
    """A gateway with real auth in front of the anomaly service; yields its base URL."""
    backends = {"anomaly": f"127.0.0.1:{anomaly_service.port}"}
    async with running_gateway(nexus_settings, backends) as url:
        yield url


@pytest.fixture
async def http(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the gateway."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
async def operator_headers(nexus_settings: NexusSettings) -> dict[str, str]:
    """Headers with a key that may train, score, manage models and follow operations."""
    key = await make_key(nexus_settings, "anomaly:*", "models:admin", "operations:admin")
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
        replicas = await stack.enter_async_context(running_services(nexus_settings))

        async def start(config: Path, **gateway: Any) -> LlmStack:
            cache = tmp_path / f"models-{uuid.uuid4().hex[:6]}"
            settings = LlmSettings(grpc_port=0, config_path=config, model_cache_dir=cache)
            host = await replicas(create_llm, settings)
            backends = {"llm": f"127.0.0.1:{host.port}"}
            gateway_url = running_gateway(nexus_settings, backends, **gateway)
            return LlmStack(host, await stack.enter_async_context(gateway_url))

        yield start
