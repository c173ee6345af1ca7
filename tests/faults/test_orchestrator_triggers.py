"""Events in through a NATS crash: an event trigger reads events published before, during and
after a SIGKILL of nats-server (restarted on the same port and store), and every event starts
exactly one run, which completes: none lost, none doubled, no dead letter."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc
import pytest

from nexus.api.anomaly.v1 import events_pb2 as anomaly_events
from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.events import DAY_S, GIB, DeadLetters, EventBus, Stream
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually
from nexus.orchestrator.server import create
from nexus.orchestrator.settings import OrchestratorSettings

pytestmark = pytest.mark.timeout(240)

EVENTS = 1000
AT_ONCE = 50
LOAD = Stream("LOAD", ("nexus.load.>",), max_age_s=DAY_S, max_bytes=GIB)
WORKFLOW = """\
name: on-load
inputs:
  source: {type: string, required: true}
triggers:
  - id: every
    event: {subject: nexus.load.detected, type: nexus.anomaly.v1.AnomalyDetected,
            condition: 'event.data.score >= 0.0'}
    inputs: {source: '${event.data.source}'}
steps:
  - id: route
    switch:
      cases: [{when: 'inputs.source != ""', steps: []}]
"""


class Publisher:
    """Publishes events e-0, e-1, ... a batch at a time (each publish retries through the crash)."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.published = 0

    async def until(self, count: int) -> None:
        while self.published < count:
            batch = range(self.published, min(count, self.published + AT_ONCE))
            await asyncio.gather(*(self._one(n) for n in batch))
            self.published = batch[-1] + 1

    async def _one(self, n: int) -> None:
        message = anomaly_events.AnomalyDetected(source=f"s{n}", score=0.5)
        await self.bus.publish("nexus.load.detected", message, event_id=f"e-{n}", timeout_s=2.0)


async def crash_when(server: NatsServer, publisher: Publisher, published: int) -> None:
    await eventually(lambda: publisher.published >= published, timeout_s=60)
    server.kill()
    await asyncio.sleep(0.5)
    await asyncio.to_thread(server.start)


async def all_runs(stub: pb_grpc.OrchestratorServiceStub) -> list[pb.Run]:
    runs: list[pb.Run] = []
    token = ""
    while True:
        reply = await stub.ListRuns(
            pb.ListRunsRequest(workflow="on-load", page_size=500, page_token=token), timeout=10
        )
        runs.extend(reply.runs)
        token = reply.next_page_token
        if not token:
            return runs


async def test_every_event_starts_one_run_across_a_nats_crash(
    nats_server: NatsServer, start_service: StartService
) -> None:
    common = NexusSettings(nats_url=nats_server.url, registry_signing_key="k", auth_enabled=False)
    host = await start_service(create, OrchestratorSettings(grpc_port=0, ack_wait_s=2.0), common)
    nc = await connect(common, "publisher")
    bus = EventBus(nc, "test")
    await bus.ensure_streams(LOAD)
    publisher = Publisher(bus)
    began = time.monotonic()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=WORKFLOW))
        crash = asyncio.create_task(crash_when(nats_server, publisher, EVENTS // 3))
        await publisher.until(EVENTS)
        await crash

        async def all_done() -> bool:
            try:
                runs = await all_runs(stub)
            except grpc.aio.AioRpcError:  # NATS still coming back
                return False
            return len(runs) >= EVENTS and all(run.done for run in runs)

        await eventually(all_done, timeout_s=180, poll_s=0.5)
        elapsed = time.monotonic() - began
        runs = await all_runs(stub)
    dead = await DeadLetters(nc.jetstream()).list()
    await nc.drain()
    print(f"{EVENTS} events -> {len(runs)} runs in {elapsed:.1f} s, through a NATS SIGKILL")

    assert Counter(run.trigger.detail for run in runs) == Counter(
        f"every:e-{n}" for n in range(EVENTS)
    )
    assert {run.state for run in runs} == {pb.RUN_STATE_SUCCEEDED}
    assert dead == []
