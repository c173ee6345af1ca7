"""Pytest fixtures that start real infrastructure, and the suite's layout rules.

NATS comes from testcontainers where a Docker engine is reachable (NEXUS_TEST_NATS=docker forces
it) and from the `nats-server` binary otherwise, so the suite never needs Docker. Set
NEXUS_TEST_NATS_URL to point the tests at an already running server instead.

Every test that needs NATS (it uses `nats_endpoint` or `nats_server`, directly or through another
fixture) is marked `integration` here, so `pytest -m "not integration"` (`make unit`) starts no
server. Every service's `tests/` folder is put on sys.path, so its helper modules import by name
(conftests cannot be imported under importlib mode); a new service needs no configuration.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from nats.aio.client import Client

from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.common.testing.services import StartService, running_services

NEEDS_NATS = frozenset({"nats_endpoint", "nats_server"})


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Puts every service's tests/ folder on sys.path before any conftest is imported
    (services/_template is not a service)."""
    for folder in sorted(early_config.rootpath.glob("services/[!_]*/tests")):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks every test that needs a NATS server `integration`."""
    for item in items:
        if NEEDS_NATS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


class NatsEndpoint(Protocol):
    """What tests need of a NATS server: its URL (and, for the binary, restart)."""

    @property
    def url(self) -> str: ...


class _External:
    def __init__(self, url: str) -> None:
        self.url = url


def _docker_nats() -> Iterator[NatsEndpoint] | None:
    """A NATS container when testcontainers and a Docker engine are both available."""
    try:
        import docker  # type: ignore[import-untyped]
        from testcontainers.nats import NatsContainer  # type: ignore[import-not-found]

        docker.from_env().ping()
    except Exception:
        return None

    def run() -> Iterator[NatsEndpoint]:
        with NatsContainer("nats:2.10-alpine").with_command("-js") as container:
            yield _External(container.nats_uri())

    return run()


@pytest.fixture(scope="session")
def nats_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsEndpoint]:
    """One NATS server with JetStream for the whole test session."""
    if url := os.environ.get("NEXUS_TEST_NATS_URL"):
        yield _External(url)
        return
    if os.environ.get("NEXUS_TEST_NATS", "auto") in {"auto", "docker"} and (
        container := _docker_nats()
    ):
        yield from container
        return
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A private nats-server binary for one test, for tests that stop or restart it."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nexus_settings(nats_endpoint: NatsEndpoint) -> NexusSettings:
    """Shared settings pointing at the session's NATS, with a test signing key."""
    return NexusSettings(
        nats_url=nats_endpoint.url,
        registry_signing_key="test-signing-key",
        log_json=False,
    )


@pytest.fixture
async def nats_client(nexus_settings: NexusSettings) -> AsyncIterator[Client]:
    """A connected NATS client for one test."""
    from nexus.common.nats import connect

    client = await connect(nexus_settings, "test")
    try:
        yield client
    finally:
        await client.drain()


@pytest.fixture
async def start_service(nexus_settings: NexusSettings) -> AsyncIterator[StartService]:
    """Starts real service replicas on the session's NATS: `await start_service(create,
    Settings(grpc_port=0))`; each is stopped at the end of the test."""
    async with running_services(nexus_settings) as start:
        yield start
