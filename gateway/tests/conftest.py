"""Fixtures: real gRPC backends (small fake servicers on port 0) and a real gateway under uvicorn.

The fakes answer from the request (so the tests can see what the gateway sent), abort with rich
`google.rpc` statuses the way services do, and record what they saw: metadata, deadlines and the
cancellation of streams.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as pb_grpc
from nexus.api.anomaly.v1 import events_pb2
from nexus.api.common.v1 import common_pb2
from nexus.api.models.v1 import model_registry_pb2 as reg
from nexus.api.models.v1 import model_registry_pb2_grpc as reg_grpc
from nexus.gateway import GatewayServer, GatewaySettings, build_app

Context = grpc.aio.ServicerContext[Any, Any]
THRESHOLD = 10.0


@dataclass
class Seen:
    """What a fake backend saw."""

    requests: list[Any] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    time_remaining: list[float | None] = field(default_factory=list)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, request: Any, context: Context) -> None:
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata() or ()))
        self.time_remaining.append(context.time_remaining())


def rich_status(
    code: grpc.StatusCode, message: str, reason: str = "", violations: dict[str, str] | None = None
) -> grpc.Status:
    """A status with google.rpc details, as nexus.common's error interceptor sends them."""
    details = []
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations.items()
            ]
        )
        details.append(_pack(bad))
    if reason:
        details.append(_pack(error_details_pb2.ErrorInfo(reason=reason, domain="nexus.ai")))
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def abort(context: Context, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


async def abort_for_name(name: str, context: Context) -> None:
    """Names drive the error cases: "error-NOT_FOUND", "bad", "too-big", "slow", "crash"; and
    "sleep-0.5" answers after that many seconds."""
    if name.startswith("error-"):
        code = grpc.StatusCode[name.removeprefix("error-")]
        await abort(context, rich_status(code, f"test {code.name}", reason="TEST_REASON"))
    elif name == "bad":
        violations = {"points[0].values": "expected 2 values, got 1"}
        await abort(
            context, rich_status(grpc.StatusCode.INVALID_ARGUMENT, "bad points", "", violations)
        )
    elif name == "too-big":
        status = rich_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "batch too large", "REQUEST_TOO_LARGE"
        )
        await abort(context, status)
    elif name == "slow":
        await asyncio.sleep(30)
    elif name.startswith("sleep-"):
        await asyncio.sleep(float(name.removeprefix("sleep-")))
    elif name == "crash":
        raise ValueError("secret internals at 10.0.0.7")


class FakeAnomaly(pb_grpc.AnomalyServiceServicer):
    """Answers from the request; a few names and sources trigger errors."""

    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def ScorePoints(self, request: pb.ScorePointsRequest, context: Context) -> Any:
        self.seen.record(request, context)
        await abort_for_name(request.name, context)
        scores = [
            pb.PointScore(id=p.id, score=sum(p.values), is_anomaly=sum(p.values) > THRESHOLD)
            for p in request.points
        ]
        model = common_pb2.ModelRef(
            name=request.name, version=request.version or "3", alias=request.alias
        )
        return pb.ScorePointsResponse(scores=scores, threshold=THRESHOLD, model=model)

    async def UploadDataset(self, request: pb.UploadDatasetRequest, context: Context) -> Any:
        self.seen.record(request, context)
        rows = request.csv.decode().strip().splitlines()
        dataset = pb.Dataset(
            id="ds-1",
            name=request.name,
            rows=len(rows) - 1 if rows else len(request.points),
            features=len(rows[0].split(",")) if rows else 0,
            feature_names=rows[0].split(",") if rows else [],
            sha256=hashlib.sha256(request.csv).hexdigest(),
            create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        )
        return pb.UploadDatasetResponse(dataset=dataset)

    async def BindSource(self, request: pb.BindSourceRequest, context: Context) -> Any:
        self.seen.record(request, context)
        binding = pb.SourceBinding(
            source=request.source,
            detector=request.detector,
            alias=request.alias or "production",
            streaming=request.streaming if request.HasField("streaming") else None,
        )
        return pb.BindSourceResponse(binding=binding)

    async def UnbindSource(self, request: pb.UnbindSourceRequest, context: Context) -> Any:
        self.seen.record(request, context)
        return pb.UnbindSourceResponse()

    async def ListSources(self, request: pb.ListSourcesRequest, context: Context) -> Any:
        self.seen.record(request, context)
        return pb.ListSourcesResponse(bindings=[pb.SourceBinding(source="s1", detector="d1")])

    async def WatchAnomalies(
        self, request: pb.WatchAnomaliesRequest, context: Context
    ) -> AsyncIterator[pb.WatchAnomaliesResponse]:
        """ "nope": NOT_FOUND at once; "late-nope": NOT_FOUND after 0.7 s; "fail": two events
        then an error; "forever": one event, then waits (recording its cancellation); otherwise
        three events."""
        self.seen.record(request, context)
        if request.source == "late-nope":
            await asyncio.sleep(0.7)
        if request.source in ("nope", "late-nope"):
            await abort(context, rich_status(grpc.StatusCode.NOT_FOUND, "no source nope"))
        try:
            for i in range({"fail": 2, "forever": 1}.get(request.source, 3)):
                yield _anomaly(request.source, i)
            if request.source == "fail":
                await abort(
                    context, rich_status(grpc.StatusCode.FAILED_PRECONDITION, "source went away")
                )
            if request.source == "forever":
                await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.seen.stream_cancelled.set()
            raise


def _anomaly(source: str, i: int) -> pb.WatchAnomaliesResponse:
    event = events_pb2.AnomalyDetected(
        source=source,
        point_id=f"p{i}",
        values=[float(i)],
        score=float(i) + 0.5,
        labels={"i": str(i)},
    )
    return pb.WatchAnomaliesResponse(anomaly=event)


class FakeRegistry(reg_grpc.ModelRegistryServiceServicer):
    """A registry that names its models after the backend it runs in."""

    def __init__(self, backend: str, seen: Seen) -> None:
        self.backend = backend
        self.seen = seen

    async def ListModels(self, request: reg.ListModelsRequest, context: Context) -> Any:
        self.seen.record(request, context)
        models = [reg.Model(name=f"{self.backend}-{i}") for i in range(request.page_size or 1)]
        return reg.ListModelsResponse(models=models, next_page_token=request.page_token + "x")

    async def GetModel(self, request: reg.GetModelRequest, context: Context) -> Any:
        self.seen.record(request, context)
        await abort_for_name(request.name, context)
        version = reg.ModelVersion(
            name=request.name,
            version="1",
            size_bytes=2**40,
            metrics={"auc": 0.75},
            create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        )
        return reg.GetModelResponse(model=reg.Model(name=request.name, versions=[version]))

    async def UploadModel(self, request: reg.UploadModelRequest, context: Context) -> Any:
        self.seen.record(request, context)
        version = reg.ModelVersion(
            name=request.name,
            version="2",
            sha256=hashlib.sha256(request.artifact).hexdigest(),
            framework=request.framework,
            size_bytes=len(request.artifact),
            metrics=request.metrics,
        )
        return reg.UploadModelResponse(version=version)

    async def DeleteModelVersion(
        self, request: reg.DeleteModelVersionRequest, context: Context
    ) -> Any:
        self.seen.record(request, context)
        return reg.DeleteModelVersionResponse()


@dataclass
class Backend:
    """One running fake backend."""

    name: str
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    seen: Seen

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)

    async def stop(self) -> None:
        await self.server.stop(0)


async def start_backend(name: str, *, anomaly: bool) -> Backend:
    seen = Seen()
    server = grpc.aio.server()
    if anomaly:
        pb_grpc.add_AnomalyServiceServicer_to_server(FakeAnomaly(seen), server)
    reg_grpc.add_ModelRegistryServiceServicer_to_server(FakeRegistry(name, seen), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    backend = Backend(name, server, port, health_servicer, seen)
    await backend.set_serving(True)
    return backend


@pytest.fixture
async def anomaly() -> AsyncIterator[Backend]:
    """The "anomaly" backend: AnomalyService and its model registry."""
    backend = await start_backend("anomaly", anomaly=True)
    yield backend
    await backend.stop()


@pytest.fixture
async def vision() -> AsyncIterator[Backend]:
    """A "vision" backend with only the model registry (for route_by_field)."""
    backend = await start_backend("vision", anomaly=False)
    yield backend
    await backend.stop()


@pytest.fixture
def settings(anomaly: Backend, vision: Backend) -> GatewaySettings:
    """Gateway settings for the two fake backends, with test-sized limits."""
    return GatewaySettings(
        port=0,
        backends={"anomaly": anomaly.address, "vision": vision.address},
        max_body_bytes=4096,
        default_timeout_s=5.0,
        max_timeout_s=10.0,
        rate_limit_per_minute=0,
        sse_keepalive_s=0.2,
        shutdown_grace_s=1.0,
    )


StartGateway = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def start_gateway(settings: GatewaySettings) -> AsyncIterator[StartGateway]:
    """Starts a gateway under uvicorn on a free port; returns a client for it.

    Keyword arguments override settings fields; `keys=` passes a key store.
    """
    servers: list[GatewayServer] = []
    clients: list[httpx.AsyncClient] = []

    async def start(*, keys: Any = None, **overrides: Any) -> httpx.AsyncClient:
        merged = settings.model_copy(update=overrides)
        server = GatewayServer(build_app(merged, keys=keys), merged)
        servers.append(server)
        client = httpx.AsyncClient(base_url=await server.start(), timeout=10.0)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
    for server in servers:
        await server.stop()


@pytest.fixture
async def client(start_gateway: StartGateway) -> httpx.AsyncClient:
    """A client of a gateway with auth off and no rate limit."""
    return await start_gateway()
