"""Idempotency keys over real gRPC servers and a real NATS: each keyed call runs once.

A scripted servicer counts how often each request really ran; replicas share one NATS, as
scaled services do.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as pb_grpc
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.common.errors import FailedPrecondition, Unavailable
from nexus.common.idempotency import (
    KEY_REUSED,
    MAX_REMEMBERED_CALLS,
    METADATA_KEY,
    RESPONSE_NOT_KEPT,
    IdempotencyStore,
    new_id,
    ran_before,
    takes_idempotency_key,
    with_call,
)
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings, ServiceSettings
from nexus.common.testing.keys import make_key

pytestmark = pytest.mark.integration

WAIT_S = 30.0
"""Longest a test waits for something that must happen (a failing test, not a slow one)."""


class Counting(pb_grpc.AnomalyServiceServicer):
    """TrainDetector as its request's name says; every run that started is counted."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def TrainDetector(self, request: pb.TrainDetectorRequest, context: Any) -> Any:
        self.runs[request.name] += 1
        self.started.set()
        await self.gate.wait()
        if request.name == "refused":
            raise FailedPrecondition("the detector is locked")
        if request.name == "busy" and self.runs[request.name] == 1:
            raise Unavailable("try again")
        if request.name == "bug":
            raise RuntimeError("a bug")
        version = models_pb.ModelVersion(name=request.name, version=str(sum(self.runs.values())))
        if request.name == "huge":  # larger than a NATS message
            version.description = "x" * (2 * 1024 * 1024)
        return pb.TrainDetectorResponse(version=version, threshold=request.contamination)

    async def ListSources(self, request: pb.ListSourcesRequest, context: Any) -> Any:
        self.runs["list"] += 1
        return pb.ListSourcesResponse(next_page_token=str(request.page_size))


StartReplica = Callable[..., Awaitable[tuple[ServiceHost, Counting]]]


@pytest.fixture
async def start_replica(nexus_settings: NexusSettings) -> AsyncIterator[StartReplica]:
    """Starts hosts with a Counting servicer on the session NATS (auth off unless asked)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            servicer: Counting | None = None, *, auth: bool = False, lease_s: float = 30.0
        ) -> tuple[ServiceHost, Counting]:
            common = nexus_settings.model_copy(
                update={"auth_enabled": auth, "idempotency_lease_s": lease_s}
            )
            servicer = servicer or Counting()
            host = ServiceHost("test", ServiceSettings(shutdown_grace_s=1.0), common)
            await host.open()
            host.add_servicer(pb_grpc.add_AnomalyServiceServicer_to_server, servicer, "t.Count")
            await host.start()
            stack.push_async_callback(host.stop)
            return host, servicer

        yield start


@contextlib.asynccontextmanager
async def stub_of(host: ServiceHost) -> AsyncIterator[pb_grpc.AnomalyServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        yield pb_grpc.AnomalyServiceStub(channel)


def keyed(key: str, api_key: str | None = None) -> tuple[tuple[str, str], ...]:
    auth = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    return ((METADATA_KEY, key), *auth)


def train(name: str = "ok", contamination: float = 0.1) -> pb.TrainDetectorRequest:
    return pb.TrainDetectorRequest(name=name, contamination=contamination)


def new_key() -> str:
    return str(uuid.uuid4())


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def reason_of(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


async def test_a_retry_gets_the_first_response_and_runs_nothing(
    start_replica: StartReplica,
) -> None:
    host, servicer = await start_replica()
    key = new_key()
    async with stub_of(host) as stub:
        first = await stub.TrainDetector(train(), metadata=keyed(key))
        again = await stub.TrainDetector(train(), metadata=keyed(key))
        unkeyed = await stub.TrainDetector(train())
    assert again == first
    assert first.version.version == "1"
    assert unkeyed.version.version == "2"  # no key: every call runs, as before
    assert servicer.runs["ok"] == 2


async def test_the_same_key_with_another_request_is_invalid_argument(
    start_replica: StartReplica,
) -> None:
    host, servicer = await start_replica()
    key = new_key()
    async with stub_of(host) as stub:
        await stub.TrainDetector(train(contamination=0.1), metadata=keyed(key))
        err = await failure(stub.TrainDetector(train(contamination=0.2), metadata=keyed(key)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Idempotency-Key" in (err.details() or "")
    assert reason_of(err) == KEY_REUSED
    assert servicer.runs["ok"] == 1


async def test_an_error_is_kept_but_a_transient_one_lets_the_retry_run(
    start_replica: StartReplica,
) -> None:
    host, servicer = await start_replica()
    refused, busy, bug = new_key(), new_key(), new_key()
    async with stub_of(host) as stub:
        for _ in range(2):
            err = await failure(stub.TrainDetector(train("refused"), metadata=keyed(refused)))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert err.details() == "the detector is locked"
            err = await failure(stub.TrainDetector(train("bug"), metadata=keyed(bug)))
            assert err.code() == grpc.StatusCode.INTERNAL
        err = await failure(stub.TrainDetector(train("busy"), metadata=keyed(busy)))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        retried = await stub.TrainDetector(train("busy"), metadata=keyed(busy))
    assert retried.version.name == "busy"
    assert servicer.runs == Counter({"refused": 1, "bug": 1, "busy": 2})


async def test_a_response_too_large_to_keep_is_not_run_again(start_replica: StartReplica) -> None:
    host, servicer = await start_replica()
    key = new_key()
    async with stub_of(host) as stub:
        first = await stub.TrainDetector(train("huge"), metadata=keyed(key))
        err = await failure(stub.TrainDetector(train("huge"), metadata=keyed(key)))
    assert len(first.version.description) == 2 * 1024 * 1024
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(err) == RESPONSE_NOT_KEPT
    assert servicer.runs["huge"] == 1


async def test_concurrent_calls_with_one_key_run_once(start_replica: StartReplica) -> None:
    host, servicer = await start_replica()
    servicer.gate.clear()
    key = new_key()
    async with stub_of(host) as stub:
        calls = [
            asyncio.ensure_future(stub.TrainDetector(train(), metadata=keyed(key)))
            for _ in range(5)
        ]
        await asyncio.wait_for(servicer.started.wait(), WAIT_S)
        await asyncio.sleep(0.3)  # the others arrive and wait meanwhile
        servicer.gate.set()
        replies = await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)
    assert all(reply == replies[0] for reply in replies)
    assert servicer.runs["ok"] == 1


async def test_replicas_sharing_nats_run_a_key_once(start_replica: StartReplica) -> None:
    shared = Counting()
    shared.gate.clear()
    one, _ = await start_replica(shared)
    two, _ = await start_replica(shared)
    key = new_key()
    async with stub_of(one) as first, stub_of(two) as second:
        calls = [
            asyncio.ensure_future(stub.TrainDetector(train(), metadata=keyed(key)))
            for stub in (first, second, first, second)
        ]
        await asyncio.wait_for(shared.started.wait(), WAIT_S)
        await asyncio.sleep(0.3)
        shared.gate.set()
        replies = await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)
    assert all(reply == replies[0] for reply in replies)
    assert shared.runs["ok"] == 1


async def test_a_call_whose_caller_timed_out_finishes_for_its_retry(
    start_replica: StartReplica,
) -> None:
    host, servicer = await start_replica()
    servicer.gate.clear()
    key = new_key()
    async with stub_of(host) as stub:
        late = stub.TrainDetector(train(), metadata=keyed(key), timeout=0.5)
        assert (await failure(late)).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert servicer.started.is_set()
        servicer.gate.set()
        retried = await stub.TrainDetector(train(), metadata=keyed(key), timeout=WAIT_S)
        assert await stub.TrainDetector(train(), metadata=keyed(key)) == retried
    assert retried.version.version == "1"
    assert servicer.runs["ok"] == 1


async def test_the_claim_of_a_replica_that_died_expires_and_a_retry_runs(
    start_replica: StartReplica,
) -> None:
    dying, stuck = await start_replica(lease_s=1.0)
    stuck.gate.clear()  # it never finishes: its process "dies" in the middle
    alive, survivor = await start_replica(lease_s=1.0)
    key = new_key()
    async with stub_of(dying) as doomed, stub_of(alive) as stub:
        lost = asyncio.ensure_future(doomed.TrainDetector(train(), metadata=keyed(key)))
        await asyncio.wait_for(stuck.started.wait(), WAIT_S)
        await dying.nc.close()  # no renewal, no outcome, no release: what a SIGKILL leaves
        retried = await stub.TrainDetector(train(), metadata=keyed(key), timeout=WAIT_S)
        lost.cancel()
    assert retried.version.name == "ok"
    assert (stuck.runs["ok"], survivor.runs["ok"]) == (1, 1)


async def test_keys_are_scoped_to_the_caller(
    start_replica: StartReplica, nexus_settings: NexusSettings
) -> None:
    host, servicer = await start_replica(auth=True)
    alice = await make_key(nexus_settings, "anomaly:train")
    bob = await make_key(nexus_settings, "anomaly:train")
    key = new_key()
    async with stub_of(host) as stub:
        await stub.TrainDetector(train(), metadata=keyed(key, alice))
        other = await stub.TrainDetector(train(), metadata=keyed(key, bob))
    assert other.version.version == "2"
    assert servicer.runs["ok"] == 2


async def test_reads_ignore_the_key(start_replica: StartReplica) -> None:
    host, servicer = await start_replica()
    key = new_key()
    async with stub_of(host) as stub:
        for size in (1, 2):
            request = pb.ListSourcesRequest(page_size=size)
            page = await stub.ListSources(request, metadata=keyed(key))
            assert page.next_page_token == str(size)
    assert servicer.runs["list"] == 2
    assert not takes_idempotency_key("/nexus.models.v1.ModelRegistryService/GetModel")
    assert takes_idempotency_key("/nexus.models.v1.ModelRegistryService/DeleteModel")


@pytest.mark.parametrize("bad", ["", "  ", '""', "x" * 256])
async def test_a_malformed_key_is_invalid_argument(start_replica: StartReplica, bad: str) -> None:
    host, servicer = await start_replica()
    async with stub_of(host) as stub:
        err = await failure(stub.TrainDetector(train(), metadata=((METADATA_KEY, bad),)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert servicer.runs["ok"] == 0


async def test_what_a_write_keeps_of_its_call(nats_client: Client) -> None:
    """A write made in an idempotent call keeps the call; the call run again recognises it (and
    derives the same id), another call does not; outside a call nothing is kept."""
    store = IdempotencyStore(nats_client, ttl_s=60.0, lease_s=30.0, bucket=f"t{new_key()[:8]}")
    await store.start()
    key = new_key()

    async def write(calls: tuple[str, ...]) -> tuple[tuple[bool, str, tuple[str, ...]], None]:
        return (ran_before(calls), new_id("thing"), with_call(calls)), None

    first_seen, first_id, kept = await store.run(key, "fp", lambda: write(()))
    again_seen, again_id, _ = await store.run(key, "fp", lambda: write(kept))
    other_seen, other_id, _ = await store.run(new_key(), "fp", lambda: write(kept))
    assert (first_seen, again_seen, other_seen) == (False, True, False)
    assert first_id == again_id != other_id
    assert with_call(kept) == kept
    assert not ran_before(kept)
    assert new_id("thing") != new_id("thing")
    many = tuple(f"call-{i}" for i in range(MAX_REMEMBERED_CALLS))
    _, _, bounded = await store.run(new_key(), "fp", lambda: write(many))
    assert len(bounded) == MAX_REMEMBERED_CALLS
    assert bounded[0] == "call-1"
