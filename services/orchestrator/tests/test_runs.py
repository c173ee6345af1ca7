"""Runs end to end over a real NATS and real services: a call to the anomaly service and a
published event; history, list, watch; retries, timeouts, on-failure, timers, signals, cancel
and rerun."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from nexus.anomaly.server import create as create_anomaly
from nexus.anomaly.settings import AnomalySettings
from nexus.api.anomaly.v1 import events_pb2 as anomaly_events
from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.events import EventBus
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.orchestrator.server import create
from nexus.orchestrator.settings import OrchestratorSettings

Metadata = tuple[tuple[str, str], ...]

ALERT = """\
name: alert
inputs:
  source: {type: string, required: true}
steps:
  - id: sources
    call:
      method: nexus.anomaly.v1.AnomalyService/ListSources
      request: {page_size: 10}
  - id: announce
    if: "size(steps.sources.output.bindings) == 0"
    publish:
      subject: nexus.anomaly.orchestrated
      type: nexus.anomaly.v1.AnomalyDetected
      data:
        source: "${inputs.source}"
        detector: "bindings:${size(steps.sources.output.bindings)}"
        score: 0.5
outputs:
  event: "${steps.announce.output.event_id}"
"""


@dataclass
class Orchestrator:
    stub: pb_grpc.OrchestratorServiceStub
    key: Metadata

    async def register(self, definition: str) -> None:
        await self.stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=definition), metadata=self.key
        )

    async def start(self, workflow: str, **inputs: Any) -> pb.Run:
        struct = Struct()
        struct.update(inputs)
        started = await self.stub.StartRun(
            pb.StartRunRequest(workflow=workflow, inputs=struct), metadata=self.key
        )
        run: pb.Run = started.run
        return run

    async def finished(self, run_id: str) -> pb.Run:
        last: pb.Run | None = None
        async for change in self.stub.WatchRun(
            pb.WatchRunRequest(run_id=run_id), metadata=self.key, timeout=60
        ):
            last = change.run
        assert last is not None
        return last

    async def history(self, run_id: str) -> list[pb.StepExecution]:
        reply = await self.stub.GetRunHistory(
            pb.GetRunHistoryRequest(run_id=run_id), metadata=self.key
        )
        return list(reply.steps)


StartOrchestrator = Callable[..., Awaitable[ServiceHost]]


@pytest.fixture
async def service_key(nexus_settings: NexusSettings) -> str:
    return await make_key(nexus_settings, "*")


@pytest.fixture
async def anomaly(start_service: StartService) -> ServiceHost:
    return await start_service(create_anomaly, AnomalySettings(grpc_port=0))


@pytest.fixture
def start_orchestrator(
    start_service: StartService, anomaly: ServiceHost, service_key: str
) -> StartOrchestrator:
    async def start(**overrides: object) -> ServiceHost:
        settings = OrchestratorSettings(
            grpc_port=0,
            backends={"anomaly": f"127.0.0.1:{anomaly.port}"},
            service_key=service_key,
            ack_wait_s=1.0,
            **overrides,  # type: ignore[arg-type]
        )
        return await start_service(create, settings)

    return start


@pytest.fixture
async def orchestrator(
    start_orchestrator: StartOrchestrator, service_key: str
) -> AsyncIterator[Orchestrator]:
    host = await start_orchestrator()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        yield Orchestrator(
            pb_grpc.OrchestratorServiceStub(channel), (("authorization", f"Bearer {service_key}"),)
        )


async def test_a_call_then_a_publish_run_end_to_end(
    orchestrator: Orchestrator, nats_client: object
) -> None:
    bus = EventBus(nats_client, "test")  # type: ignore[arg-type]
    await orchestrator.register(ALERT)

    run = await orchestrator.start("alert", source="cpu")
    done = await orchestrator.finished(run.run_id)
    steps = await orchestrator.history(run.run_id)
    listed = await orchestrator.stub.ListRuns(
        pb.ListRunsRequest(workflow="alert"), metadata=orchestrator.key
    )
    stored = await bus.js.get_last_msg("ANOMALY", "nexus.anomaly.orchestrated")
    event = anomaly_events.AnomalyDetected.FromString(stored.data or b"")

    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
    assert [(s.step_id, s.state, s.attempts) for s in steps] == [
        ("sources", pb.STEP_STATE_SUCCEEDED, 1),
        ("announce", pb.STEP_STATE_SUCCEEDED, 1),
    ]
    assert (event.source, event.detector) == ("cpu", "bindings:0")
    assert json_format.MessageToDict(done.outputs) == {
        "event": f"orchestrator:{run.run_id}:announce:1"
    }
    assert [r.run_id for r in listed.runs] == [run.run_id]


async def test_bad_inputs_and_unknown_runs_are_clear_errors(orchestrator: Orchestrator) -> None:
    await orchestrator.register(ALERT)

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await orchestrator.start("alert")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await orchestrator.stub.GetRun(pb.GetRunRequest(run_id="nope"), metadata=orchestrator.key)

    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs.source" in (missing.value.details() or "")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
