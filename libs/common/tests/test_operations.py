"""Long-running operations over real NATS and a real gRPC server: progress, results, cancel,
retries, bad input, and the sweeper that takes back what a dead replica held."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from nexus.api.operations.v1 import operations_pb2 as pb
from nexus.api.operations.v1 import operations_pb2_grpc as pb_grpc
from nexus.common.errors import InvalidArgument, Unavailable
from nexus.common.operations import (
    OperationKind,
    OperationRecord,
    Operations,
    Progress,
    State,
    current_operation,
)
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings, ServiceSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.timeout(120)

RELEASE: dict[str, asyncio.Event] = {}
"""Work "hold:<key>" runs until the test sets RELEASE[key]."""
RUNS: dict[str, int] = {}
"""How many times the work ran, per request value."""


async def steps(request: StringValue, progress: Progress) -> StringValue:
    """Test work whose request says what it does."""
    RUNS[request.value] = RUNS.get(request.value, 0) + 1
    what, _, key = request.value.partition(":")
    await progress.stage("preparing", 0.0)
    if what == "hold":
        while not RELEASE[key].is_set():
            await progress.report(metrics={"loss": 1.0})
            await asyncio.sleep(0.05)
    elif what == "fail":
        raise InvalidArgument.for_field("value", "refused")
    elif what == "flaky":
        raise Unavailable("the backend is down")
    elif what == "name":
        return StringValue(value=current_operation())
    for epoch in range(1, 4):
        await progress.stage("training", 25.0 * epoch)
        await progress.report(metrics={"epoch": float(epoch)})
    return StringValue(value=f"done:{request.value}")


class Replica:
    """A test service that runs `steps` operations, and a client of it."""

    def __init__(self, host: ServiceHost, operations: Operations, key: str) -> None:
        self.host, self.operations = host, operations
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
        self.stub = pb_grpc.OperationsServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {key}"),)

    async def start(self, value: str) -> str:
        return (await self.operations.submit("steps", StringValue(value=value))).name

    async def get(self, name: str) -> pb.Operation:
        request = pb.GetOperationRequest(name=name)
        return (await self.stub.GetOperation(request, metadata=self.metadata)).operation

    async def state(self, name: str) -> int:
        return (await self.get(name)).state

    async def watch(self, name: str) -> list[pb.Operation]:
        request = pb.WatchOperationRequest(name=name)
        stream = self.stub.WatchOperation(request, metadata=self.metadata, timeout=60)
        return [reply.operation async for reply in stream]

    async def cancel(self, name: str) -> pb.Operation:
        request = pb.CancelOperationRequest(name=name)
        return (await self.stub.CancelOperation(request, metadata=self.metadata)).operation


@pytest.fixture
async def start_replica(
    start_service: StartService, nexus_settings: NexusSettings
) -> AsyncIterator[object]:
    key = await make_key(nexus_settings, "*")
    replicas: list[Replica] = []

    async def start(service: str, **settings: object) -> Replica:
        made: list[Operations] = []

        async def create(config: ServiceSettings, common: NexusSettings) -> ServiceHost:
            host = ServiceHost(service, config, common)
            await host.open()
            operations = host.operations(OperationKind("steps", StringValue, steps))
            made.append(operations)
            await host.start()
            await host.manage(operations)
            await host.set_serving()
            return host

        host = await start_service(create, ServiceSettings(grpc_port=0, **settings))
        replicas.append(Replica(host, made[0], key))
        return replicas[-1]

    yield start
    for replica in replicas:
        await replica.channel.close()


def service() -> str:
    return f"ops-{uuid.uuid4().hex[:8]}"


def hold() -> tuple[str, asyncio.Event]:
    key = uuid.uuid4().hex[:8]
    RELEASE[key] = asyncio.Event()
    return f"hold:{key}", RELEASE[key]


async def test_a_started_operation_is_watched_until_it_is_done_with_its_result(
    start_replica: object,
) -> None:
    replica = await start_replica(service())  # type: ignore[operator]
    name = await replica.start("ok")
    seen = await replica.watch(name)

    assert seen[-1].state == pb.OPERATION_STATE_SUCCEEDED
    assert seen[-1].done
    result = StringValue()
    assert seen[-1].response.Unpack(result)
    assert result.value == "done:ok"
    assert seen[-1].progress.percent == 100.0
    assert seen[-1].attempt == 1
    assert {op.progress.stage for op in seen} >= {"training"}
    assert all(not op.done for op in seen[:-1])
    assert (await replica.get(name)) == seen[-1]


async def test_the_work_knows_the_name_of_the_operation_it_runs(start_replica: object) -> None:
    replica = await start_replica(service())  # type: ignore[operator]
    name = await replica.start("name")
    done = (await replica.watch(name))[-1]

    result = StringValue()
    assert done.response.Unpack(result)
    assert result.value == name
    assert current_operation() == ""  # outside any operation's work


async def test_progress_carries_metrics_and_an_eta_while_running(start_replica: object) -> None:
    replica = await start_replica(service())  # type: ignore[operator]
    work, release = hold()
    name = await replica.start(work)
    await eventually(lambda: _metric(replica, name, "loss"))
    running = await replica.get(name)
    assert running.state == pb.OPERATION_STATE_RUNNING
    assert running.progress.stage == "preparing"
    assert running.HasField("start_time")
    assert not running.HasField("end_time")
    release.set()
    await eventually(lambda: _is(replica, name, pb.OPERATION_STATE_SUCCEEDED))
    done = await replica.get(name)
    assert done.progress.metrics["epoch"] == 3.0
    assert not done.progress.HasField("eta")


async def test_a_queued_operation_is_cancelled_at_once_and_never_runs(
    start_replica: object,
) -> None:
    replica = await start_replica(service(), operations_workers=1)  # type: ignore[operator]
    work, release = hold()
    first = await replica.start(work)
    await eventually(lambda: _is(replica, first, pb.OPERATION_STATE_RUNNING))
    queued_value = f"ok-{uuid.uuid4().hex[:6]}"
    second = await replica.start(queued_value)

    cancelled = await replica.cancel(second)
    assert cancelled.state == pb.OPERATION_STATE_CANCELLED
    assert cancelled.done
    assert cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]
    release.set()
    await eventually(lambda: _is(replica, first, pb.OPERATION_STATE_SUCCEEDED))
    await asyncio.sleep(0.5)  # the cancelled one's message reached the free worker
    assert RUNS.get(queued_value, 0) == 0
    assert (await replica.get(second)).attempt == 0


async def test_a_running_operation_is_cancelled_at_its_next_step(start_replica: object) -> None:
    replica = await start_replica(service())  # type: ignore[operator]
    work, _ = hold()  # never released: only the cancel ends it
    name = await replica.start(work)
    await eventually(lambda: _is(replica, name, pb.OPERATION_STATE_RUNNING))

    answer = await replica.cancel(name)
    assert answer.cancel_requested or answer.state == pb.OPERATION_STATE_CANCELLED
    await eventually(lambda: _is(replica, name, pb.OPERATION_STATE_CANCELLED))
    ended = await replica.get(name)
    assert ended.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert not ended.cancel_requested
    assert (await replica.cancel(name)) == ended  # a finished operation is answered as it is


async def test_an_error_retrying_cannot_fix_fails_at_once(start_replica: object) -> None:
    replica = await start_replica(service())  # type: ignore[operator]
    seen = await replica.watch(await replica.start("fail"))
    assert seen[-1].state == pb.OPERATION_STATE_FAILED
    assert seen[-1].attempt == 1
    assert seen[-1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "refused" in seen[-1].error.message


async def test_an_error_that_may_pass_is_retried_then_fails_with_it(
    start_replica: object,
) -> None:
    replica = await start_replica(service(), operations_max_attempts=2)  # type: ignore[operator]
    value = f"flaky:{uuid.uuid4().hex[:6]}"
    seen = await replica.watch(await replica.start(value))
    assert seen[-1].state == pb.OPERATION_STATE_FAILED
    assert seen[-1].attempt == 2
    assert seen[-1].error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "backend is down" in seen[-1].error.message
    assert RUNS[value] == 2


async def test_bad_names_unknown_operations_and_page_limits(start_replica: object) -> None:
    own = service()
    replica = await start_replica(own)  # type: ignore[operator]
    cases = {
        "nonsense": grpc.StatusCode.INVALID_ARGUMENT,
        f"{own}/operations/xyz": grpc.StatusCode.INVALID_ARGUMENT,
        f"other/operations/{uuid.uuid4().hex}": grpc.StatusCode.INVALID_ARGUMENT,
        f"{own}/operations/{uuid.uuid4().hex}": grpc.StatusCode.NOT_FOUND,
        "": grpc.StatusCode.INVALID_ARGUMENT,
    }
    for name, code in cases.items():
        for call in (replica.get, replica.cancel, replica.watch):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call(name)
            assert failed.value.code() == code, (name, call)
    for bad in (
        pb.ListOperationsRequest(name=own, page_size=-1),
        pb.ListOperationsRequest(name=own, page_token="garbage"),
        pb.ListOperationsRequest(name="other"),
        pb.ListOperationsRequest(),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await replica.stub.ListOperations(bad, metadata=replica.metadata)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


async def test_lists_page_oldest_first_and_filter_by_state(start_replica: object) -> None:
    own = service()
    replica = await start_replica(own)  # type: ignore[operator]
    names = [await replica.start("ok") for _ in range(3)]
    failed = await replica.start("fail")
    for name in (*names, failed):
        await replica.watch(name)

    async def page(**fields: object) -> pb.ListOperationsResponse:
        request = pb.ListOperationsRequest(name=own, **fields)  # type: ignore[arg-type]
        return await replica.stub.ListOperations(request, metadata=replica.metadata)

    first = await page(page_size=2)
    rest = await page(page_size=2, page_token=first.next_page_token)
    listed = [op.name for op in (*first.operations, *rest.operations)]
    assert listed == [*names, failed]
    assert not rest.next_page_token
    succeeded = await page(state=pb.OPERATION_STATE_SUCCEEDED, page_size=500)
    assert [op.name for op in succeeded.operations] == names
    assert (await page(page_size=10_000)).operations  # above the maximum: lowered, not refused
    with pytest.raises(grpc.aio.AioRpcError) as other_filter:
        await page(state=pb.OPERATION_STATE_FAILED, page_token=first.next_page_token)
    assert other_filter.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_operation_whose_replica_stopped_heartbeating_is_taken_back(
    start_replica: object,
) -> None:
    replica = await start_replica(service(), operations_max_attempts=2)  # type: ignore[operator]
    operations: Operations = replica.operations
    now = time.time()
    dead = OperationRecord(
        service=operations.service,
        id=uuid.uuid4().hex,
        kind="steps",
        state=State.RUNNING,
        created=now - 600,
        updated=now - 600,
        attempt=1,
        max_attempts=2,
        runner="gone",
    )
    last = replace(dead, id=uuid.uuid4().hex, attempt=2)
    fresh = replace(dead, id=uuid.uuid4().hex, updated=now)
    for record in (dead, last, fresh):
        await operations.store.create(record)
    await operations.store.records()

    changed = {record.id: record for record in await operations.sweep(time.time())}

    assert changed[dead.id].state is State.QUEUED
    assert changed[dead.id].runner == ""
    assert changed[last.id].state is State.FAILED
    assert "gave up" in changed[last.id].error.message
    assert fresh.id not in changed


async def _is(replica: Replica, name: str, state: int) -> bool:
    return await replica.state(name) == state


async def _metric(replica: Replica, name: str, metric: str) -> bool:
    return metric in (await replica.get(name)).progress.metrics
