"""Server bootstrap: what every service process shares, built one way.

`ServiceHost` owns a service's NATS connection, event bus, API-key store, model registry,
worker pool and gRPC server (health, reflection, interceptors built from settings), and the
start and stop of every part the service hands it (`manage`). A service's `create` opens the
host, builds its parts, adds its servicers, starts, warms its models, then calls
`set_serving()`; readiness is SERVING only from then on. On SIGTERM it turns NOT_SERVING, stops
accepting, drains in-flight RPCs within the grace period, then stops its parts and closes what it
opened, in reverse order. `run_service` is every service's `python -m nexus.<name>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client

from nexus.api.models.v1 import model_registry_pb2_grpc
from nexus.api.operations.v1 import operations_pb2_grpc
from nexus.common.auth import AuthInterceptor, KeyStore
from nexus.common.errors.interceptor import ErrorInterceptor
from nexus.common.events import EventBus
from nexus.common.idempotency import IdempotencyInterceptor, IdempotencyStore
from nexus.common.nats import close, connect
from nexus.common.operations import OperationKind, Operations, OperationsConfig
from nexus.common.operations.servicer import SERVICE_NAME as OPERATIONS_SERVICE
from nexus.common.operations.servicer import OperationsServicer
from nexus.common.registry import ModelRegistry, UploadHook
from nexus.common.registry.servicer import ModelRegistryServicer
from nexus.common.rules import RulesInterceptor
from nexus.common.settings import NexusSettings, ServiceSettings
from nexus.common.telemetry import (
    MetricsInterceptor,
    TracingInterceptor,
    setup_logging,
    setup_tracing,
    start_metrics_server,
)

log = logging.getLogger(__name__)

REGISTRY_SERVICE = "nexus.models.v1.ModelRegistryService"
AddServicer = Callable[[Any, grpc.aio.Server], None]
Hook = Callable[[], Awaitable[None]]


class Part(Protocol):
    """Something a service starts once (stores, followers, processors); its `stop()`, when it
    has one, runs at shutdown."""

    async def start(self) -> None:
        """Starts it (connects, loads, subscribes)."""


P = TypeVar("P", bound=Part)
S = TypeVar("S", bound=ServiceSettings)


def grpc_options(settings: ServiceSettings) -> list[tuple[str, int]]:
    """Channel and server options shared by servers and clients: message size limits."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]


class ServiceHost:
    """The plumbing of one service process.

    Args:
        name: The service's short name ("anomaly"): its NATS client name, metrics label, event
            source and registry scope.
        settings: The service's own settings (ports, limits).
        common: Settings shared by every process.
    """

    def __init__(self, name: str, settings: ServiceSettings, common: NexusSettings) -> None:
        self.name = name
        self.settings = settings
        self.common = common
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._service_names: list[str] = [health.SERVICE_NAME, reflection.SERVICE_NAME]
        self._nc: Client | None = None
        self._bus: EventBus | None = None
        self._keys: KeyStore | None = None
        self._idempotency: IdempotencyStore | None = None
        self._registry: ModelRegistry | None = None
        self._operations: Operations | None = None
        self._server: grpc.aio.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._on_stop: list[Hook] = []
        self._stop_requested = asyncio.Event()
        self._serving = False
        self._stopped = False

    @property
    def nc(self) -> Client:
        """The NATS connection (after `open`)."""
        assert self._nc is not None, "open() first"
        return self._nc

    @property
    def keys(self) -> KeyStore | None:
        """The API key store (after `open`); None when auth is off."""
        return self._keys

    @property
    def bus(self) -> EventBus:
        """The event bus (after `open`)."""
        assert self._bus is not None, "open() first"
        return self._bus

    @property
    def server(self) -> grpc.aio.Server:
        """The gRPC server (after `open`)."""
        assert self._server is not None, "open() first"
        return self._server

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The service's one worker pool (`settings.workers` threads) for CPU-heavy work: model
        loading, fitting, scoring. Shut down at stop, after the server drained."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.settings.workers, thread_name_prefix=self.name)
        return self._executor

    async def manage(self, part: P) -> P:
        """Starts `part` now and, if it has a `stop()`, stops it at shutdown (parts stop newest
        first); returns it."""
        await part.start()
        stop = getattr(part, "stop", None)
        if stop is not None:
            self.on_stop(stop)
        return part

    async def open(self) -> None:
        """Sets up logging and tracing, connects to NATS, builds the server (not started)."""
        setup_logging(self.common, self.name)
        setup_tracing(self.name, self.common)
        self._nc = await connect(self.common, self.name, on_state=self._follow_nats)
        self._bus = EventBus(self._nc, f"nexus/{self.name}")
        if self.common.auth_enabled:
            self._keys = KeyStore(self._nc)
            await self._keys.start()
        self._idempotency = IdempotencyStore(
            self._nc,
            ttl_s=self.common.idempotency_ttl_s,
            lease_s=self.common.idempotency_lease_s,
        )
        await self._idempotency.start()
        self._server = grpc.aio.server(
            interceptors=self._interceptors(),
            options=grpc_options(self.settings),
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        # First is outermost: the trace and the metrics see auth failures and mapped errors.
        chain: list[grpc.aio.ServerInterceptor] = [
            TracingInterceptor(),
            MetricsInterceptor(self.name),
        ]
        if self._keys is not None:
            chain.append(AuthInterceptor(self._keys))
        chain.append(ErrorInterceptor())
        chain.append(RulesInterceptor())  # inside the error mapping, which maps its refusals
        if self._idempotency is not None:  # innermost: it sees the servicers' own errors
            chain.append(IdempotencyInterceptor(self._idempotency))
        return chain

    async def registry(
        self,
        *,
        upload_frameworks: Collection[str] = (),
        upload_hooks: Mapping[str, UploadHook] | None = None,
    ) -> ModelRegistry:
        """The service's model registry, started on first use and served as
        `nexus.models.v1.ModelRegistryService` (scoped to this service's models);
        `upload_hooks` check or convert uploads per framework (see ModelRegistry)."""
        if self._registry is None:
            key = self.common.registry_signing_key.get_secret_value().encode()
            self._registry = ModelRegistry(
                self.bus,
                self.name,
                signing_key=key,
                upload_frameworks=upload_frameworks,
                upload_hooks=upload_hooks,
            )
            await self._registry.start()
            self.add_servicer(
                model_registry_pb2_grpc.add_ModelRegistryServiceServicer_to_server,
                ModelRegistryServicer(self._registry),
                REGISTRY_SERVICE,
            )
        return self._registry

    def operations(self, *kinds: OperationKind[Any, Any]) -> Operations:
        """The service's long-running operations of `kinds`, served as
        `nexus.operations.v1.OperationsService`. Call before `start`; start them with
        `manage` once what their work needs is started (they take queued work at once). A
        service that does not call it gets none at `start`: every service answers the same
        routes (`GET /v1/<service>/operations`), with an empty list."""
        if self._operations is not None:
            raise RuntimeError(f"{self.name}: operations declared twice")
        config = OperationsConfig(
            workers=self.settings.operations_workers,
            max_attempts=self.settings.operations_max_attempts,
            ack_wait_s=self.settings.operations_ack_wait_s,
        )
        operations = self._operations = Operations(self.bus, self.name, kinds, config)
        self.add_servicer(
            operations_pb2_grpc.add_OperationsServiceServicer_to_server,
            OperationsServicer(operations),
            OPERATIONS_SERVICE,
        )
        return operations

    def add_servicer(self, add: AddServicer, servicer: object, service_name: str) -> None:
        """Registers a servicer with its generated `add_..._to_server` function."""
        add(servicer, self.server)
        self._service_names.append(service_name)

    def on_stop(self, hook: Hook) -> None:
        """Runs `hook` at stop, after the server drained (hooks run newest first)."""
        self._on_stop.append(hook)

    async def start(self) -> int:
        """Binds and starts the server, NOT_SERVING until `set_serving`; returns the port."""
        if self._operations is None:
            await self.manage(self.operations())
        reflection.enable_server_reflection(self._service_names, self.server)
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self.port = self.server.add_insecure_port(address)
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        self.metrics_port = start_metrics_server(self.settings.metrics_port)
        log.info("%s listening on %s:%d", self.name, self.settings.grpc_host, self.port)
        return self.port

    async def set_serving(self) -> None:
        """Marks every service SERVING: call once models are loaded and warmed."""
        self._serving = True
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        log.info("%s ready", self.name)

    async def _follow_nats(self, connected: bool) -> None:
        """Readiness follows the NATS connection once SERVING: keys, models and events all
        need it, so a caller learns at once (NOT_SERVING) rather than by waiting."""
        if not self._serving or self._stopped:
            return
        status = health_pb2.HealthCheckResponse.SERVING
        if not connected:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        await self._set_all(status)
        log.info("%s %s", self.name, "ready again" if connected else "not ready: NATS is down")

    async def _set_all(self, status: int) -> None:
        for service in ["", *self._service_names]:
            await self.health.set(service, status)

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, drain in-flight RPCs, then close in reverse order."""
        if self._stopped:
            return
        self._stopped = True
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_s)
        if self._idempotency is not None:  # keyed calls go on when their caller leaves
            await self._idempotency.stop(self.settings.shutdown_grace_s)
        for hook in reversed(self._on_stop):
            await _quietly(hook)
        if self._executor is not None:
            executor = self._executor
            await _quietly(lambda: asyncio.to_thread(executor.shutdown, True, cancel_futures=True))
        for closer in (self._registry, self._keys):
            if closer is not None:
                await _quietly(closer.stop)
        if self._nc is not None:
            nc = self._nc
            await _quietly(lambda: close(nc))
        log.info("%s stopped", self.name)

    async def wait_for_signal(self) -> None:
        """Blocks until SIGTERM or SIGINT, then stops gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped_by_signal)
        await self._stop_requested.wait()
        await self.stop()

    def _stopped_by_signal(self) -> None:
        log.info("%s: signal received, stopping", self.name)
        self._stop_requested.set()


Create = Callable[[S, NexusSettings], Awaitable[ServiceHost]]


async def serve(create: Create[S], settings: S, common: NexusSettings | None = None) -> None:
    """Builds a service with its `create` and runs it until SIGTERM or SIGINT.

    What the process holds before and once it is built is frozen (`freeze_heap`): this is the
    process's own entry point, so nothing else shares its heap.
    """
    freeze_heap()  # the modules: most of it, and before any consumer starts
    host = await create(settings, common or NexusSettings())
    freeze_heap()  # what starting built (models, compiled code)
    await host.wait_for_signal()


def freeze_heap() -> None:
    """Moves what the process holds now out of the cyclic garbage collector's reach
    (`gc.freeze`), after collecting what is garbage now.

    A full collection walks every tracked object: a service's imports alone are about 360,000
    of them (the anomaly service's full collection took 130 to 160 ms), and a replica draining
    the anomaly stream made one about twice a second, holding the GIL throughout (its messages,
    events and points live for a batch, long enough to reach the oldest generation and start
    one; docs/adr/0054-anomaly-drain-gc-and-writes.md). Frozen objects are still freed when no
    longer referenced; only a cycle among them would never be, so only a process's entry point
    (`serve`) freezes, never a `create` called in tests or in a shared process.
    """
    gc.collect()
    gc.freeze()


def run_service(create: Create[S], settings: Callable[[], S]) -> None:
    """`python -m nexus.<name>`: settings from the environment, then `serve` until a signal."""
    asyncio.run(serve(create, settings()))


async def _quietly(hook: Hook) -> None:
    """Runs a shutdown step; a failure is logged, never stops the rest of the shutdown."""
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await hook()
        except Exception:
            log.exception("error during shutdown")
