"""The platform's processes: embedded NATS, every installed service, the gateway.

Services are discovered through the `nexus.services` entry-point group, so installing a
service's package is all it takes for `nexus up` to run it. Each runs as its own process
(`python -m nexus.<name>`) on its own port, exactly as it would in a container, in a session of
its own: the terminal's Ctrl-C reaches only the launcher, which stops the children in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus.common.errors import Unavailable
from nexus.common.launcher._files import RunInfo, service_key, signing_key
from nexus.common.launcher._supervisor import Backoff, Supervised, Supervisor
from nexus.common.natsserver import NatsServer, ensure_port_free, free_port

GATEWAY = "gateway"
NATS = "nats-server"
CALLS_SERVICES = frozenset({"orchestrator"})
"""Services that call the others (as the chart's `callsServices`): each gets the backend map the
gateway gets (`NEXUS_<NAME>_BACKENDS`) and a key of its own (`NEXUS_<NAME>_SERVICE_KEY`)."""
log = logging.getLogger(__name__)


def installed_services() -> list[str]:
    """Names of the installed services (not the gateway), sorted."""
    names = {ep.name for ep in entry_points(group="nexus.services")}
    return sorted(names - {GATEWAY})


def gateway_installed() -> bool:
    """Whether the nexus-gateway package is installed."""
    return any(ep.name == GATEWAY for ep in entry_points(group="nexus.services"))


@dataclass
class Child:
    """A service (or the gateway) process, and what it takes to start it again."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process.poll() is None


@dataclass
class Platform:
    """Runs NATS, the services and the gateway as child processes, restarts them, stops them.

    Args:
        data_dir: Where NATS keeps its data and the children their logs.
        nats_port: NATS client port (0: a free one).
        gateway_port: The gateway's HTTP port (0: a free one).
        services: Which services to run (default: every installed one).
        host: Interface of NATS and the services (and where the launcher reaches the gateway).
        gateway_host: Interface the gateway binds to.
    """

    data_dir: Path
    nats_port: int = 4222
    gateway_port: int = 8080
    services: list[str] = field(default_factory=installed_services)
    host: str = "127.0.0.1"
    gateway_host: str = "127.0.0.1"
    nats: NatsServer | None = None
    children: list[Child] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        """The gateway's base URL."""
        return f"http://{self._gateway_address}:{self.gateway_port}"

    @property
    def _gateway_address(self) -> str:
        return self.host if self.gateway_host in ("0.0.0.0", "", "::") else self.gateway_host

    def check_ports(self) -> None:
        """Fails clearly, before anything starts, when a port asked for is taken.

        Raises:
            FailedPrecondition: NATS's or the gateway's port is taken.
        """
        ensure_port_free(self.host, self.nats_port, "NATS (--nats-port, NEXUS_NATS_PORT)")
        ensure_port_free(
            self.gateway_host, self.gateway_port, "the gateway (--port, NEXUS_GATEWAY_PORT)"
        )

    async def start_nats(self) -> str:
        """Starts the embedded NATS with JetStream; returns its URL."""
        self.nats = NatsServer(
            self.data_dir / "nats", port=self.nats_port, host=self.host, own_session=True
        )
        await self._start_nats()
        return self.nats.url

    async def _start_nats(self, timeout_s: float = 10.0) -> None:
        assert self.nats is not None
        self.nats.spawn()
        deadline = time.monotonic() + timeout_s
        # A process to poll: there is no event to await.
        while not self.nats.ready(deadline):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

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
        ports = {name: free_port(self.host) for name in self.services}
        started = [self._spawn_service(name, port, ports) for name, port in ports.items()]
        self.children.extend(started)
        await asyncio.gather(*(self._wait_serving(c, timeout_s) for c in started))

    def _spawn_service(self, name: str, port: int, ports: dict[str, int]) -> Child:
        prefix = f"NEXUS_{name.upper()}_"
        env = {**self.env(), f"{prefix}GRPC_PORT": str(port), f"{prefix}GRPC_HOST": self.host}
        if name in CALLS_SERVICES:
            # The services running already (a child restarted alone) and those starting now.
            running = {c.name: c.port for c in self.children if c.name not in (name, GATEWAY)}
            env[f"{prefix}BACKENDS"] = json.dumps(self._backends({**running, **ports}))
            env[f"{prefix}SERVICE_KEY"] = service_key(self.data_dir, name)
        return self._spawn(name, port, env)

    def _backends(self, ports: dict[str, int]) -> dict[str, str]:
        """Service name -> "host:port" of every service (what the gateway routes to)."""
        return {name: f"{self.host}:{port}" for name, port in ports.items()}

    async def start_gateway(self, timeout_s: float = 60.0) -> None:
        """Starts the gateway in front of the services and waits until it is ready."""
        self.gateway_port = self.gateway_port or free_port(self.gateway_host)
        backends = self._backends({c.name: c.port for c in self.children})
        env = {
            **self.env(),
            "NEXUS_GATEWAY_HOST": self.gateway_host,
            "NEXUS_GATEWAY_PORT": str(self.gateway_port),
            "NEXUS_GATEWAY_BACKENDS": json.dumps(backends),
        }
        child = self._spawn(GATEWAY, self.gateway_port, env)
        self.children.append(child)
        await self._wait_http(child, "/readyz", timeout_s)

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
                start_new_session=True,
            )
        return Child(name, port, process, log_path, env)

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

    async def _wait_http(self, child: Child, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive(child)
            if await _http_ok(self._gateway_address, child.port, path):
                return
            await asyncio.sleep(0.2)
        raise Unavailable(f"the gateway was not ready in {timeout_s}s; see {child.log_path}")

    @staticmethod
    def _check_alive(child: Child) -> None:
        if not child.running:
            raise Unavailable(f"{child.name} exited at start; see {child.log_path}")

    def dead_children(self) -> list[Child]:
        """Children that have exited."""
        return [c for c in self.children if not c.running]

    async def supervise(self, backoff: Backoff, on_restart: Callable[[], None]) -> None:
        """Restarts NATS (first), a service or the gateway when it exits, on the same port,
        until cancelled; `on_restart` is called after each attempt."""
        await Supervisor(self._supervised(), backoff, on_restart).run()

    def _supervised(self) -> list[Supervised]:
        nats = self.nats
        assert nats is not None
        first = Supervised(
            NATS, lambda: nats.running, lambda: nats.returncode, self._start_nats, is_nats=True
        )
        return [first, *(self._supervised_child(c) for c in self.children)]

    def _supervised_child(self, child: Child) -> Supervised:
        return Supervised(
            child.name,
            lambda: child.running,
            lambda: child.process.poll(),
            lambda: self._restart(child),
        )

    async def _restart(self, child: Child, timeout_s: float = 120.0) -> None:
        """Starts `child` again on its port with its environment; once ready, returns."""
        child.process = self._spawn(child.name, child.port, child.env).process
        try:
            if child.name == GATEWAY:  # its /readyz needs the services: /healthz is its own
                await self._wait_http(child, "/healthz", timeout_s)
            else:
                await self._wait_serving(child, timeout_s)
        except BaseException:
            _kill(child.process)
            raise

    def run_info(self) -> RunInfo:
        """Where everything runs now (the run file's content)."""
        assert self.nats is not None
        children = {NATS: {"pid": self.nats.pid or 0, "port": self.nats.port}}
        for child in self.children:
            children[child.name] = {"pid": child.process.pid, "port": child.port}
        gateway = self.gateway_url if any(c.name == GATEWAY for c in self.children) else ""
        return RunInfo(os.getpid(), str(self.data_dir), self.nats.url, gateway, children)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stops the gateway, then the services, then NATS; each gets SIGTERM and `timeout_s`
        to exit, then SIGKILL."""
        gateway = [c for c in self.children if c.name == GATEWAY]
        services = [c for c in self.children if c.name != GATEWAY]
        for stage in (gateway, services):
            if stage:
                log.info("stopping %s", ", ".join(c.name for c in stage))
                _stop_all(stage, timeout_s)
        self.children.clear()
        if self.nats is not None:
            log.info("stopping %s", NATS)
            self.nats.stop(timeout_s)

    def kill(self) -> None:
        """Kills every child at once (SIGKILL): a second Ctrl-C during a stop."""
        for child in self.children:
            _kill(child.process)
        if self.nats is not None:
            self.nats.kill()


def _stop_all(children: list[Child], timeout_s: float) -> None:
    """SIGTERM to each running child, then waits for all; kills those that are late."""
    for child in children:
        if child.running:
            child.process.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs: killing it", child.name, timeout_s)
            _kill(child.process)
            child.process.wait()


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()


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
