"""What a replica sees of runs that another replica drives (ADR 0056): each run's view, published
at a drive's end rather than at each step; a watch that reads the run's writes while it lasts;
the views of runs written without one (an older version) published by the next replica to
start; and every run's writes followed while a replica of an older version runs. Real NATS,
real replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct
from nats.aio.client import Client
from nats.aio.msg import Msg

from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually
from nexus.orchestrator.engine.records import RunRecord
from nexus.orchestrator.engine.replicas import BUCKET as REPLICAS_BUCKET
from nexus.orchestrator.engine.store import BUCKET, VIEWS_BUCKET
from nexus.orchestrator.server import create
from nexus.orchestrator.settings import OrchestratorSettings

Metadata = tuple[tuple[str, str], ...]
STEPS = 60


def _published(name: str, steps: int, first: dict[str, Any] | None = None) -> str:
    body = [
        {
            "id": f"s{i}",
            "publish": {
                "subject": "nexus.workflows.views",  # stream WORKFLOWS: the orchestrator's own
                "type": "nexus.orchestrator.v1.WorkflowEvent",
                "data": {"title": f"{i}"},
            },
        }
        for i in range(steps)
    ]
    return json.dumps({"name": name, "steps": [first, *body] if first else body})


@contextlib.asynccontextmanager
async def replica(host: ServiceHost, key: str) -> AsyncIterator[tuple[Any, Metadata]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        yield pb_grpc.OrchestratorServiceStub(channel), (("authorization", f"Bearer {key}"),)


async def _start(stub: Any, metadata: Metadata, workflow: str) -> str:
    request = pb.StartRunRequest(workflow=workflow, inputs=Struct())
    return str((await stub.StartRun(request, metadata=metadata)).run.run_id)


async def _listed(stub: Any, metadata: Metadata, workflow: str) -> list[pb.Run]:
    reply = await stub.ListRuns(pb.ListRunsRequest(workflow=workflow), metadata=metadata)
    return list(reply.runs)


async def test_a_replica_sees_each_step_it_watches_of_a_run_driven_elsewhere_and_few_views(
    start_service: StartService, nexus_settings: NexusSettings, nats_client: Client
) -> None:
    key = await make_key(nexus_settings, "*")
    settings = OrchestratorSettings(grpc_port=0, service_key=key, ack_wait_s=8.0, view_every_s=60.0)
    hosts = [await start_service(create, settings), await start_service(create, settings)]
    writes: dict[str, int] = {}
    views: dict[str, int] = {}

    def counted(into: dict[str, int]) -> Any:
        async def count(msg: Msg) -> None:
            run_id = msg.subject.rsplit(".", 1)[-1]
            into[run_id] = into.get(run_id, 0) + 1

        return count

    await nats_client.subscribe(f"$KV.{BUCKET}.*", cb=counted(writes))
    await nats_client.subscribe(f"$KV.{VIEWS_BUCKET}.*", cb=counted(views))
    signal = {"id": "go", "wait_signal": {"name": "go", "timeout_s": 60}}
    async with replica(hosts[0], key) as (watcher, metadata), replica(hosts[1], key) as (driver, _):
        await driver.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=_published("viewed", STEPS)), metadata=metadata
        )
        await driver.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=_published("signalled", STEPS, signal)),
            metadata=metadata,
        )
        quiet = await _start(driver, metadata, "viewed")  # driven where started, to its end
        watched = await _start(driver, metadata, "signalled")
        changes = watcher.WatchRun(pb.WatchRunRequest(run_id=watched), metadata=metadata)
        seen = [await anext(aiter(changes))]
        await driver.SignalRun(pb.SignalRunRequest(run_id=watched, signal="go"), metadata=metadata)
        seen.extend([change async for change in changes])
        await eventually(lambda: _all_succeeded(watcher, metadata, "viewed"))

    assert seen[-1].run.state == pb.RUN_STATE_SUCCEEDED
    # Every step the other replica (or this one, through the queue) wrote: each one seen.
    assert {c.run.steps_executed for c in seen} >= set(range(1, STEPS + 2))
    assert writes[quiet] > STEPS  # each step written...
    assert views[quiet] <= 4  # ...and published to the replicas at its start and end


async def _all_succeeded(stub: Any, metadata: Metadata, workflow: str) -> bool:
    runs = await _listed(stub, metadata, workflow)
    return bool(runs) and all(run.state == pb.RUN_STATE_SUCCEEDED for run in runs)


async def _one_second_ack_wait(start_service: StartService, nexus_settings: NexusSettings) -> Any:
    key = await make_key(nexus_settings, "*")
    settings = OrchestratorSettings(grpc_port=0, service_key=key, ack_wait_s=1.0)
    return key, settings, await start_service(create, settings)


async def test_a_run_written_without_a_view_is_published_listed_and_woken_by_the_next_replica(
    start_service: StartService, nexus_settings: NexusSettings, nats_client: Client
) -> None:
    key, settings, first = await _one_second_ack_wait(start_service, nexus_settings)
    nap = {"id": "nap", "sleep": {"seconds": 1.5}}
    async with replica(first, key) as (stub, metadata):
        await stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=_published("napping", 2, nap)),
            metadata=metadata,
        )
        run_id = await _start(stub, metadata, "napping")
        await eventually(lambda: _state(stub, metadata, run_id, pb.RUN_STATE_WAITING))
    await first.stop()
    views = await nats_client.jetstream().key_value(VIEWS_BUCKET)
    await views.purge(run_id)  # as a version without views leaves a run

    second = await start_service(create, settings)
    async with replica(second, key) as (stub, metadata):
        assert [run.run_id for run in await _listed(stub, metadata, "napping")] == [run_id]
        await eventually(lambda: _state(stub, metadata, run_id, pb.RUN_STATE_SUCCEEDED))


async def _state(stub: Any, metadata: Metadata, run_id: str, state: int) -> bool:
    run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=metadata)).run
    return bool(run.state == state)


@contextlib.asynccontextmanager
async def beating(nats_client: Client, beat: str) -> AsyncIterator[str]:
    """Beats as a replica that is not there (`beat`: what follows the time), until the block
    ends; then its key is deleted, as a graceful stop does."""
    beats = await nats_client.jetstream().key_value(REPLICAS_BUCKET)
    replica_id = uuid.uuid4().hex

    async def beat_on() -> None:
        while True:
            await beats.put(replica_id, f"{time.time():.3f}{beat}".encode())
            await asyncio.sleep(0.2)

    task = asyncio.create_task(beat_on())
    try:
        await asyncio.sleep(0.5)  # two of its beats seen
        yield replica_id
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await beats.delete(replica_id)


async def _written_without_view(nats_client: Client, workflow: str, driven_by: str) -> str:
    """A run stored as a replica leaves it that wrote no view of it, its advance not published."""
    now = time.time()
    record = RunRecord(
        run_id=uuid.uuid4().hex,
        workflow=workflow,
        version=1,
        inputs={},
        created=now,
        updated=now,
        pending=("s0", "s1"),
        tick=1,
        wake_at=now + 60,
        driven_by=driven_by,
    )
    runs = await nats_client.jetstream().key_value(BUCKET)
    await runs.create(record.run_id, record.encode())
    return record.run_id


async def test_while_an_older_replica_beats_the_runs_it_writes_are_followed_and_woken(
    start_service: StartService, nexus_settings: NexusSettings, nats_client: Client
) -> None:
    key, _, host = await _one_second_ack_wait(start_service, nexus_settings)
    async with replica(host, key) as (stub, metadata):
        await stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=_published("olders", 2)), metadata=metadata
        )
        async with beating(nats_client, "") as older:
            run_id = await _written_without_view(nats_client, "olders", older)
            await eventually(lambda: _listed_ids(stub, metadata, "olders", [run_id]))
        # Its beats stop: the run it drove is taken over.
        await eventually(lambda: _state(stub, metadata, run_id, pb.RUN_STATE_SUCCEEDED))


async def _listed_ids(stub: Any, metadata: Metadata, workflow: str, ids: list[str]) -> bool:
    return [run.run_id for run in await _listed(stub, metadata, workflow)] == ids


async def test_a_run_whose_replica_stopped_before_publishing_its_view_is_taken_over(
    start_service: StartService, nexus_settings: NexusSettings, nats_client: Client
) -> None:
    key, _, host = await _one_second_ack_wait(start_service, nexus_settings)
    async with replica(host, key) as (stub, metadata):
        await stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=_published("orphans", 2)), metadata=metadata
        )
        async with beating(nats_client, " views") as dying:
            run_id = await _written_without_view(nats_client, "orphans", dying)
        await eventually(lambda: _state(stub, metadata, run_id, pb.RUN_STATE_SUCCEEDED))
