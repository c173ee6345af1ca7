"""The whole platform on one machine: embedded NATS, every installed service, the gateway.

Services are discovered through the `nexus.services` entry-point group, so installing a
service's package is all it takes for `nexus up` to run it. Each runs as its own process
(`python -m nexus.<name>`) on its own port, exactly as it would in a container.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus.common.errors import Unavailable
from nexus.common.natsserver import NatsServer, free_port

GATEWAY = "gateway"
log = logging.getLogger(__name__)


def installed_services() -> list[str]:
    """Names of the installed services (not the gateway), sorted."""
    names = {ep.name for ep in entry_points(group="nexus.services")}
    return sorted(names - {GATEWAY})


def gateway_installed() -> bool:
    """Whether the nexus-gateway package is installed."""
    return any(ep.name == GATEWAY for ep in entry_points(group="nexus.services"))


def signing_key(data_dir: Path) -> str:
    """The registry signing key of this installation, made once and kept (mode 0600)."""
    path = data_dir / "registry-signing.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass
class Child:
    """A service process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class Platform:
    """Runs NATS, the services and the gateway as child processes.

    Args:
        data_dir: Where NATS keeps its data and the children their logs.
        nats_port: NATS client port (0: a free one).
        gateway_port: The gateway's HTTP port (0: a free one).
        services: Which services to run (default: every installed one).
    """

    data_dir: Path
    nats_port: int = 4222
    gateway_port: int = 8080
    services: list[str] = field(default_factory=installed_services)
    host: str = "127.0.0.1"
    nats: NatsServer | None = None
    children: list[Child] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        """The gateway's base URL."""
        return f"http://{self.host}:{self.gateway_port}"

    def start_nats(self) -> str:
        """Starts the embedded NATS with JetStream; returns its URL."""
        self.nats = NatsServer(self.data_dir / "nats", port=self.nats_port, host=self.host)
        self.nats.start()
        return self.nats.url

    def env(self) -> dict[str, str]:
        """The environment every child shares."""
        assert self.nats is not None
        return {
            **os.environ,
            "NEXUS_NATS_URL": self.nats.url,
            "NEXUS_REGISTRY_SIGNING_KEY": signing_key(self.data_dir),
        }

    async def start_services(self, timeout_s: float = 120.0) -> None:
        """Starts every service and waits until each one reports SERVING."""
        started = [self._spawn_service(name) for name in self.services]
        self.children.extend(started)
        await asyncio.gather(*(self._wait_serving(c, timeout_s) for c in started))

    def _spawn_service(self, name: str) -> Child:
        port = free_port(self.host)
        prefix = f"NEXUS_{name.upper()}_"
        env = {**self.env(), f"{prefix}GRPC_PORT": str(port), f"{prefix}GRPC_HOST": self.host}
        return self._spawn(name, port, env)

    async def start_gateway(self, timeout_s: float = 60.0) -> None:
        """Starts the gateway in front of the services and waits until it is ready."""
        self.gateway_port = self.gateway_port or free_port(self.host)
        backends = {c.name: f"{self.host}:{c.port}" for c in self.children}
        env = {
            **self.env(),
            "NEXUS_GATEWAY_HOST": self.host,
            "NEXUS_GATEWAY_PORT": str(self.gateway_port),
            "NEXUS_GATEWAY_BACKENDS": json.dumps(backends),
        }
        child = self._spawn(GATEWAY, self.gateway_port, env)
        self.children.append(child)
        await self._wait_http_ready(child, timeout_s)

    def _spawn(self, name: str, port: int, env: dict[str, str]) -> Child:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", f"nexus.{name}"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return Child(name, port, process, log_path)

    async def _wait_serving(self, child: Child, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        async with grpc.aio.insecure_channel(f"{self.host}:{child.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self._check_alive(child)
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.2)
        raise Unavailable(
            f"{child.name} did not become ready in {timeout_s}s; see {child.log_path}"
        )

    async def _wait_http_ready(self, child: Child, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive(child)
            if await _http_ok(self.host, child.port, "/readyz"):
                return
            await asyncio.sleep(0.2)
        raise Unavailable(f"the gateway was not ready in {timeout_s}s; see {child.log_path}")

    @staticmethod
    def _check_alive(child: Child) -> None:
        if child.process.poll() is not None:
            raise Unavailable(f"{child.name} exited at start; see {child.log_path}")

    def dead_children(self) -> list[Child]:
        """Children that have exited."""
        return [c for c in self.children if c.process.poll() is not None]

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stops the gateway, then the services (SIGTERM, then SIGKILL), then NATS."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.terminate()
        for child in reversed(self.children):
            try:
                child.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                child.process.kill()
        self.children.clear()
        if self.nats is not None:
            self.nats.stop()


async def _http_ok(host: str, port: int, path: str) -> bool:
    """Whether GET path answers 200 (a minimal client: the launcher needs no HTTP library)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status_line = await asyncio.wait_for(reader.readline(), 2.0)
        return b" 200 " in status_line
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
