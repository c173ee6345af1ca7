"""Runs end to end over a real NATS and real services: a call to the anomaly service and a
published event; history, list, watch; retries, timeouts, on-failure, timers, signals, cancel
and rerun."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nexus.anomaly.server import create as create_anomaly
from nexus.anomaly.settings import AnomalySettings
from nexus.api.anomaly.v1 import events_pb2 as anomaly_events
from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.auth import new_key, open_key_store
from nexus.common.events import EventBus
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.telemetry import setup_tracing
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually
from nexus.orchestrator.engine.store import BUCKET, SEAL_STEPS
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
    if: "size(steps.sources.output.bindings) >= 0 && inputs.source != ''"
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

    async def signal(self, run_id: str, **payload: Any) -> None:
        struct = Struct()
        struct.update(payload)
        request = pb.SignalRunRequest(run_id=run_id, signal="approval", payload=struct)
        await self.stub.SignalRun(request, metadata=self.key)

    async def whole_history(self, run_id: str) -> list[pb.StepExecution]:
        """Every page of the run's history."""
        steps: list[pb.StepExecution] = []
        token = ""
        while True:
            reply = await self.stub.GetRunHistory(
                pb.GetRunHistoryRequest(run_id=run_id, page_size=50, page_token=token),
                metadata=self.key,
            )
            steps.extend(reply.steps)
            token = reply.next_page_token
            if not token:
                return steps

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
        values: dict[str, Any] = {
            "grpc_port": 0,
            "backends": {"anomaly": f"127.0.0.1:{anomaly.port}"},
            "service_key": service_key,
            "ack_wait_s": 1.0,
            **overrides,
        }
        settings = OrchestratorSettings(**values)
        return await start_service(create, settings)

    return start


@contextlib.asynccontextmanager
async def connected(host: ServiceHost, key: str) -> AsyncIterator[Orchestrator]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        yield Orchestrator(
            pb_grpc.OrchestratorServiceStub(channel), (("authorization", f"Bearer {key}"),)
        )


@pytest.fixture
async def orchestrator(
    start_orchestrator: StartOrchestrator, service_key: str
) -> AsyncIterator[Orchestrator]:
    async with connected(await start_orchestrator(), service_key) as orchestrator:
        yield orchestrator


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
    # Other tests bind sources on the same NATS server: the count is whatever they left.
    assert event.source == "cpu"
    assert event.detector.startswith("bindings:")
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


FLAKY = """\
name: flaky
steps:
  - id: sources
    retry: {max_attempts: 3, initial_backoff_s: 0.05, max_backoff_s: 0.1}
    call:
      method: nexus.anomaly.v1.AnomalyService/ListSources
      request: {}
on_failure:
  - id: alarm
    publish:
      subject: nexus.anomaly.orchestrated
      type: nexus.anomaly.v1.AnomalyDetected
      data: {source: "flaky:${run.id}"}
"""


async def test_a_failing_call_is_retried_with_backoff_then_the_on_failure_path_runs(
    start_orchestrator: StartOrchestrator, service_key: str
) -> None:
    host = await start_orchestrator(backends={"anomaly": "127.0.0.1:1"})  # nothing listens
    async with connected(host, service_key) as orchestrator:
        await orchestrator.register(FLAKY)
        run = await orchestrator.start("flaky")
        done = await orchestrator.finished(run.run_id)
        steps = await orchestrator.history(run.run_id)

    assert done.state == pb.RUN_STATE_FAILED
    assert done.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert [(s.step_id, s.state, s.attempts) for s in steps] == [
        ("sources", pb.STEP_STATE_FAILED, 3),
        ("alarm", pb.STEP_STATE_SUCCEEDED, 1),
    ]
    assert json_format.MessageToDict(steps[1].input) == {"source": f"flaky:{run.run_id}"}


APPROVAL = """\
name: approval
steps:
  - id: nap
    sleep: {seconds: 0.2}
  - id: approve
    wait_signal: {name: approval, timeout_s: 1}
  - id: check
    switch:
      cases:
        - when: "steps.approve.output.ok == true"
          steps: [{id: approved, sleep: {seconds: 0.01}}]
      default: [{id: refused, fail: {message: "refused by ${steps.approve.output.by}"}}]
outputs:
  approved_by: "${steps.approve.output.by}"
"""


async def test_a_signal_sent_before_the_wait_is_kept_and_the_timer_fires(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(APPROVAL)
    run = await orchestrator.start("approval")
    await orchestrator.signal(run.run_id, ok=True, by="ada")

    done = await orchestrator.finished(run.run_id)
    steps = await orchestrator.history(run.run_id)

    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
    assert json_format.MessageToDict(done.outputs) == {"approved_by": "ada"}
    assert [s.step_id for s in steps] == ["nap", "approve", "check", "approved"]
    assert steps[0].duration.ToNanoseconds() >= 200_000_000


async def test_a_run_failed_by_a_signal_timeout_is_rerun_from_that_step(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(APPROVAL)
    run = await orchestrator.start("approval")
    failed = await orchestrator.finished(run.run_id)

    await orchestrator.stub.RerunRun(
        pb.RerunRunRequest(run_id=run.run_id), metadata=orchestrator.key
    )
    await orchestrator.signal(run.run_id, ok=False, by="bob")
    refused = await orchestrator.finished(run.run_id)
    steps = await orchestrator.history(run.run_id)

    assert failed.state == pb.RUN_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert refused.state == pb.RUN_STATE_FAILED
    assert refused.error.message == "refused by bob"
    assert [(s.step_id, s.state) for s in steps] == [
        ("nap", pb.STEP_STATE_SUCCEEDED),
        ("approve", pb.STEP_STATE_FAILED),
        ("approve", pb.STEP_STATE_SUCCEEDED),
        ("check", pb.STEP_STATE_SUCCEEDED),
        ("refused", pb.STEP_STATE_FAILED),
    ]


async def test_cancel_and_the_run_timeout_end_a_waiting_run(orchestrator: Orchestrator) -> None:
    await orchestrator.register(
        "name: slow\ntimeout_s: 0.5\nsteps:\n  - {id: nap, sleep: {seconds: 30}}\n"
    )
    await orchestrator.register("name: slower\nsteps:\n  - {id: nap, sleep: {seconds: 30}}\n")
    timing_out = await orchestrator.start("slow")
    cancelled = await orchestrator.start("slower")

    await orchestrator.stub.CancelRun(
        pb.CancelRunRequest(run_id=cancelled.run_id), metadata=orchestrator.key
    )

    assert (await orchestrator.finished(cancelled.run_id)).state == pb.RUN_STATE_CANCELLED
    assert (await orchestrator.finished(timing_out.run_id)).state == pb.RUN_STATE_TIMED_OUT


async def test_a_call_past_its_step_timeout_fails_with_deadline_exceeded(
    start_orchestrator: StartOrchestrator, service_key: str
) -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # a service that accepts connections and never answers

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    host = await start_orchestrator(backends={"anomaly": f"127.0.0.1:{port}"})
    async with server, connected(host, service_key) as orchestrator:
        await orchestrator.register(
            "name: hasty\nsteps:\n  - id: sources\n    timeout_s: 0.3\n"
            "    retry: {max_attempts: 2, initial_backoff_s: 0}\n"
            "    call: {method: nexus.anomaly.v1.AnomalyService/ListSources}\n"
        )
        run = await orchestrator.start("hasty")
        done = await orchestrator.finished(run.run_id)
        steps = await orchestrator.history(run.run_id)

    assert done.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert (steps[0].state, steps[0].attempts) == (pb.STEP_STATE_FAILED, 2)
    assert steps[0].last_attempt_duration.ToNanoseconds() >= 300_000_000


async def test_a_workflow_calls_with_no_more_than_the_scopes_of_the_key_that_registered_it(
    orchestrator: Orchestrator, nexus_settings: NexusSettings
) -> None:
    narrow = await make_key(nexus_settings, "orchestrator:admin", "orchestrator:invoke")
    as_narrow = Orchestrator(orchestrator.stub, (("authorization", f"Bearer {narrow}"),))
    await as_narrow.register(ALERT.replace("name: alert", "name: narrow"))

    run = await as_narrow.start("narrow", source="cpu")
    done = await as_narrow.finished(run.run_id)

    assert done.state == pb.RUN_STATE_FAILED
    assert done.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "anomaly:invoke" in done.error.message


@pytest.mark.parametrize(
    ("effect", "named", "recorded"),
    [
        (
            "call:\n      method: nexus.anomaly.v1.AnomalyService/ListSources\n"
            "      request: {page_size: 'many', nothing: 1}\n",
            "nexus.anomaly.v1.ListSourcesRequest",
            {"page_size": "many", "nothing": 1},
        ),
        # A publish step's opening is written with its outcome (ADR 0035): here, the failure.
        (
            "publish:\n      subject: nexus.anomaly.orchestrated\n"
            "      type: nexus.anomaly.v1.AnomalyDetected\n      data: {score: high}\n",
            "nexus.anomaly.v1.AnomalyDetected",
            {"score": "high"},
        ),
    ],
)
async def test_a_request_or_message_that_cannot_be_built_fails_its_step_at_once(
    orchestrator: Orchestrator, effect: str, named: str, recorded: dict[str, Any]
) -> None:
    await orchestrator.register(
        f"name: misfit\nsteps:\n  - id: sources\n    retry: {{max_attempts: 5}}\n    {effect}"
    )
    run = await orchestrator.start("misfit")
    done = await orchestrator.finished(run.run_id)
    steps = await orchestrator.history(run.run_id)

    assert done.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert named in done.error.message
    assert (steps[0].state, steps[0].attempts) == (pb.STEP_STATE_FAILED, 1)
    assert json_format.MessageToDict(steps[0].input) == recorded


async def test_two_replicas_share_the_runs_and_each_step_runs_once(
    start_orchestrator: StartOrchestrator, service_key: str
) -> None:
    hosts = [await start_orchestrator(), await start_orchestrator()]
    async with (
        connected(hosts[0], service_key) as first,
        connected(hosts[1], service_key) as second,
    ):
        await first.register(ALERT.replace("name: alert", "name: shared"))
        runs = [await (first, second)[i % 2].start("shared", source=f"s{i}") for i in range(20)]
        done = [await first.finished(run.run_id) for run in runs]
        histories = [await second.history(run.run_id) for run in runs]

    assert {run.state for run in done} == {pb.RUN_STATE_SUCCEEDED}
    assert {tuple((s.step_id, s.attempts) for s in steps) for steps in histories} == {
        (("sources", 1), ("announce", 1))
    }


async def test_the_orchestrator_stores_its_service_key_without_its_own_scopes(
    start_orchestrator: StartOrchestrator, nexus_settings: NexusSettings
) -> None:
    _, raw = new_key()  # made elsewhere (nexus up, a Secret), not stored yet
    await start_orchestrator(service_key=raw)
    async with open_key_store(nexus_settings, "test") as keys:
        stored = await keys.verify(raw)

    assert stored.name == "orchestrator"
    assert stored.allows("anomaly:invoke")
    assert stored.allows("models:admin")
    assert not any(scope.startswith("orchestrator:") or scope == "*" for scope in stored.scopes)


def _long(steps: int) -> str:
    """A workflow of `steps` publish steps whose last one and outputs read the first one's."""
    body = [
        {
            "id": f"s{i}",
            "publish": {
                "subject": "nexus.anomaly.orchestrated",
                "type": "nexus.anomaly.v1.AnomalyDetected",
                "data": {"source": "${steps.s0.output.event_id}" if i == steps - 1 else f"{i}"},
            },
        }
        for i in range(steps)
    ]
    outputs = {"first": "${steps.s0.output.event_id}", "count": "${size(steps)}"}
    return json.dumps({"name": "long", "steps": body, "outputs": outputs})


async def test_a_long_run_keeps_a_small_record_and_its_whole_history(
    orchestrator: Orchestrator, nats_client: object
) -> None:
    steps = 2 * SEAL_STEPS + 22  # two sealed chunks and a tail
    await orchestrator.register(_long(steps))

    run = await orchestrator.start("long")
    done = await orchestrator.finished(run.run_id)
    history = await orchestrator.whole_history(run.run_id)
    kv = await nats_client.jetstream().key_value(BUCKET)  # type: ignore[attr-defined]
    stored = json.loads((await kv.get(run.run_id)).value)

    first = f"orchestrator:{run.run_id}:s0:1"
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
    assert json_format.MessageToDict(done.outputs) == {"first": first, "count": steps}
    assert done.steps_executed == steps
    assert [s.step_id for s in history] == [f"s{i}" for i in range(steps)]
    assert json_format.MessageToDict(history[-1].input)["source"] == first
    assert len(stored["history"]) <= SEAL_STEPS  # the record did not grow with the run
    assert sum(stored["seals"]) + len(stored["history"]) == steps


FANOUT = """\
name: fanout
inputs:
  sources: {type: array, required: true}
steps:
  - id: each
    map:
      items: inputs.sources
      concurrency: 2
      steps:
        - id: announce_item
          publish:
            subject: nexus.anomaly.orchestrated
            type: nexus.anomaly.v1.AnomalyDetected
            data: {source: "${item}", detector: "${run.parent}"}
  - id: both
    parallel:
      branches:
        - name: left
          steps:
            - id: left_nap
              sleep: {seconds: 0.01}
            - id: left_count
              publish:
                subject: nexus.anomaly.orchestrated
                type: nexus.anomaly.v1.AnomalyDetected
                data: {source: "count:${size(steps.each.output)}"}
        - name: right
          steps:
            - id: right_sub
              workflow: {name: alert, inputs: {source: "sub"}}
outputs:
  items: "${steps.each.output}"
  both: "${steps.both.output}"
"""


async def test_map_parallel_and_a_sub_workflow_run_as_child_runs_and_join(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(ALERT)
    await orchestrator.register(FANOUT)

    run = await orchestrator.start("fanout", sources=["a", "b", "c"])
    done = await orchestrator.finished(run.run_id)
    steps = await orchestrator.history(run.run_id)
    children = await orchestrator.stub.ListRuns(
        pb.ListRunsRequest(workflow="fanout", page_size=50), metadata=orchestrator.key
    )

    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
    outputs = json_format.MessageToDict(done.outputs)
    items = outputs["items"]
    assert [item["subject"] for item in items] == ["nexus.anomaly.orchestrated"] * 3
    assert len({item["event_id"] for item in items}) == 3  # one child run per item
    assert outputs["both"]["left"]["subject"] == "nexus.anomaly.orchestrated"
    assert outputs["both"]["right"]["event"].endswith(":announce:1")  # the sub-workflow's
    assert [s.step_id for s in steps] == ["each", "both"]
    assert json_format.MessageToDict(steps[0].output) == {"value": items}  # a list, wrapped
    kinds = sorted(r.trigger.kind for r in children.runs if r.run_id != run.run_id)
    assert kinds == ["branch"] * 5  # three items, two branches (the sub-workflow's is "alert")


FANFAIL = """\
name: fanfail
steps:
  - id: both
    parallel:
      branches:
        - name: waits
          steps: [{id: wait_long, wait_signal: {name: never}}]
        - name: fails
          steps: [{id: boom, fail: {message: "boom"}}]
"""


async def test_a_failed_branch_fails_the_step_and_cancels_the_other_branches(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(FANFAIL)

    run = await orchestrator.start("fanfail")
    done = await orchestrator.finished(run.run_id)

    await eventually(
        lambda: _children_are(orchestrator, run, [pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED]),
        timeout_s=10,
    )
    assert done.state == pb.RUN_STATE_FAILED
    assert "parallel both[1]" in done.error.message
    assert done.error.message.endswith("boom")


async def _children_are(orchestrator: Orchestrator, parent: pb.Run, states: list[int]) -> bool:
    """Whether the other runs of the parent's workflow (its children) are in `states`."""
    listed = await orchestrator.stub.ListRuns(
        pb.ListRunsRequest(workflow=parent.workflow), metadata=orchestrator.key
    )
    return sorted(r.state for r in listed.runs if r.run_id != parent.run_id) == sorted(states)


async def test_cancelling_a_run_cancels_the_runs_its_map_started(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(
        "name: waiting_map\nsteps:\n  - id: each\n    map:\n      items: '[1, 2]'\n"
        "      steps: [{id: wait_each, wait_signal: {name: never}}]\n"
    )
    run = await orchestrator.start("waiting_map")

    await eventually(
        lambda: _children_are(orchestrator, run, [pb.RUN_STATE_WAITING] * 2), timeout_s=10
    )
    await orchestrator.stub.CancelRun(
        pb.CancelRunRequest(run_id=run.run_id), metadata=orchestrator.key
    )
    await eventually(
        lambda: _children_are(orchestrator, run, [pb.RUN_STATE_CANCELLED] * 2), timeout_s=10
    )


async def test_a_workflow_that_calls_itself_stops_at_the_nesting_limit(
    orchestrator: Orchestrator,
) -> None:
    await orchestrator.register(
        "name: forever\nsteps:\n  - id: again\n    workflow: {name: forever}\n"
    )

    done = await orchestrator.finished((await orchestrator.start("forever")).run_id)

    assert done.state == pb.RUN_STATE_FAILED
    assert done.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "nested more than 8 deep" in done.error.message


async def test_bad_fan_out_steps_are_refused_with_their_fields(
    orchestrator: Orchestrator,
) -> None:
    twins = (
        "name: bad_fanout\nsteps:\n"
        "  - id: both\n    parallel:\n      branches:\n"
        "        - {name: x, steps: [{id: one, sleep: {seconds: 0}}]}\n"
        "        - {name: x, steps: [{id: two, sleep: {seconds: 0}}]}\n"
    )
    broken = (
        "name: bad_fanout\nsteps:\n"
        "  - id: each\n    map: {items: 'inputs.(', steps: [{id: three, sleep: {seconds: 0}}]}\n"
    )
    refused = []
    for definition in (twins, broken):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await orchestrator.register(definition)
        refused.append((caught.value.code(), caught.value.details() or ""))

    assert [code for code, _ in refused] == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert "steps[0].parallel.branches: branch names must be unique" in refused[0][1]
    assert "steps[0].map.items: bad expression" in refused[1][1]


async def test_a_run_is_one_trace_from_its_start_through_the_services_it_calls(
    orchestrator: Orchestrator, nexus_settings: NexusSettings
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", nexus_settings, exporter=exporter)
    await orchestrator.register(ALERT)

    run = await orchestrator.start("alert", source="traced")
    done = await orchestrator.finished(run.run_id)
    await asyncio.sleep(0.2)  # the last consumer span ends after its handler returns
    spans = exporter.get_finished_spans()

    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
    started = [s for s in spans if s.kind.name == "SERVER" and s.name.endswith("/StartRun")]
    assert started, [s.name for s in spans]
    in_trace = {s.name for s in spans if s.context.trace_id == started[-1].context.trace_id}
    # Driven by the replica that started it (no advance on the queue, ADR 0053): its steps'
    # calls and publishes are in StartRun's trace.
    assert any(n.endswith("AnomalyService/ListSources") for n in in_trace), in_trace
    assert any(n.startswith("publish nexus.anomaly.orchestrated") for n in in_trace), in_trace
