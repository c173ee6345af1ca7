"""Pytest fixtures that start real infrastructure.

NATS comes from testcontainers where a Docker engine is reachable (NEXUS_TEST_NATS=docker forces
it) and from the `nats-server` binary otherwise, so the suite never needs Docker. Set
NEXUS_TEST_NATS_URL to point the tests at an already running server instead.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from nats.aio.client import Client

from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings


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
