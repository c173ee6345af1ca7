"""`wait_event` steps: bad ones refused at their field and line; over a real NATS, the first
event after the wait began that passes the condition completes the step (an earlier one and a
non-matching one do not), and a wait with no such event times out into the on-failure path.
(A SIGKILL while waiting: tests/faults/test_orchestrator.py.)"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from nexus.api.anomaly.v1 import events_pb2 as anomaly_events
from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.errors import InvalidArgument
from nexus.common.events import DAY_S, MIB, EventBus, Stream
from nexus.common.server import ServiceHost
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually
from nexus.orchestrator.definitions import parse_definition
from nexus.orchestrator.server import create
from nexus.orchestrator.settings import OrchestratorSettings

WAITS = Stream("TESTWAITS", ("nexus.testwaits.>",), max_age_s=DAY_S, max_bytes=64 * MIB)
TYPE = "nexus.anomaly.v1.AnomalyDetected"


def waiting_for(subject: str, extra: str = "") -> str:
    return (
        "name: w\ninputs:\n  source: {type: string}\nsteps:\n  - id: seen\n    wait_event:\n"
        f"      subject: {subject}\n      type: {TYPE}\n{extra}"
    )


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (waiting_for("'nexus.anomaly.>.x'"), "steps[0].wait_event.subject", "does not match"),
        (waiting_for("other.detected"), "steps[0].wait_event.subject", "line 7"),
        (
            waiting_for("nexus.a", "      condition: 'event.data.score >'\n"),
            "steps[0].wait_event.condition",
            "bad expression",
        ),
        (
            waiting_for("nexus.a", "      condition: 'tick.unix > 0'\n"),
            "steps[0].wait_event.condition",
            "a wait_event step reads only event, inputs, item, run, steps, not 'tick'",
        ),
        (
            waiting_for("nexus.a", "      timeout_s: 0\n"),
            "steps[0].wait_event.timeout_s",
            "line 9",
        ),
        (
            waiting_for("nexus.a", "      timeout_s: 40000000\n"),
            "steps[0].wait_event.timeout_s",
            "is greater than the maximum",
        ),
        (
            waiting_for("nexus.a").replace(TYPE, "nexus.anomaly.v1.Nothing"),
            "steps[0].wait_event.type",
            "unknown message type",
        ),
        (
            waiting_for("nexus.a", "      signal: x\n"),
            "steps[0].wait_event.signal",
            "line 9",
        ),
    ],
)
def test_bad_wait_event_steps_are_refused_at_their_field(text: str, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_definition(text)

    found = [(v.field, v.description) for v in caught.value.violations]
    assert any(f == field and words in d for f, d in found), found


Connected = tuple[pb_grpc.OrchestratorServiceStub, Any, EventBus]


@contextlib.asynccontextmanager
async def connected(
    start_service: StartService, nexus_settings: Any, nats_client: Any, **overrides: Any
) -> AsyncIterator[Connected]:
    key = await make_key(nexus_settings, "*")
    bus = EventBus(nats_client, "test")
    await bus.ensure_streams(WAITS)
    settings = OrchestratorSettings(grpc_port=0, service_key=key, ack_wait_s=1.0, **overrides)
    host: ServiceHost = await start_service(create, settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        yield pb_grpc.OrchestratorServiceStub(channel), (("authorization", f"Bearer {key}"),), bus


@pytest.fixture
async def orchestrator(
    start_service: StartService, nexus_settings: Any, nats_client: Any
) -> AsyncIterator[Connected]:
    async with connected(start_service, nexus_settings, nats_client) as made:
        yield made


CONFIRM = """\
name: {name}
inputs:
  source: {{type: string, required: true}}
steps:
  - id: confirmed
    wait_event:
      subject: {subject}
      type: nexus.anomaly.v1.AnomalyDetected
      condition: "event.data.source == inputs.source && event.data.score > 0.5"
      timeout_s: {timeout}
  - id: after
    sleep: {{seconds: 0}}
on_failure:
  - id: gave_up
    sleep: {{seconds: 0}}
outputs:
  event: "${{steps.confirmed.output.id}}"
  score: "${{steps.confirmed.output.data.score}}"
"""


async def start(
    stub: pb_grpc.OrchestratorServiceStub, key: Any, name: str, subject: str, timeout_s: float
) -> str:
    definition = CONFIRM.format(name=name, subject=subject, timeout=timeout_s)
    await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=definition), metadata=key)
    inputs = Struct()
    inputs.update({"source": "cpu"})
    started = await stub.StartRun(pb.StartRunRequest(workflow=name, inputs=inputs), metadata=key)
    run_id = str(started.run.run_id)

    async def waiting() -> bool:
        run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=key)).run
        return bool(run.state == pb.RUN_STATE_WAITING and run.current_step == "confirmed")

    await eventually(waiting)
    return run_id


async def finished(stub: pb_grpc.OrchestratorServiceStub, key: Any, run_id: str) -> pb.Run:
    watch = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), metadata=key, timeout=30)
    runs = [reply.run async for reply in watch]
    last: pb.Run = runs[-1]
    return last


def detected(source: str, score: float) -> anomaly_events.AnomalyDetected:
    return anomaly_events.AnomalyDetected(source=source, score=score)


async def test_the_first_matching_event_after_the_wait_began_completes_the_step(
    start_service: StartService, nexus_settings: Any, nats_client: Any
) -> None:
    # No poll in the test's time: the events' hints wake the run.
    made = connected(start_service, nexus_settings, nats_client, wait_event_poll_s=3600)
    async with made as (stub, key, bus):
        area = f"nexus.testwaits.{uuid.uuid4().hex}"
        subject = f"{area}.cpu"
        await bus.publish(subject, detected("cpu", 0.9))  # before the wait: not seen
        run_id = await start(stub, key, f"w{uuid.uuid4().hex[:8]}", f"{area}.*", 60)
        await bus.publish(f"{area}.x.y", detected("cpu", 0.9))  # not under the filter
        await bus.publish(subject, detected("disk", 0.9))  # another source
        await bus.publish(subject, detected("cpu", 0.1))  # below the threshold
        wanted = await bus.publish(subject, detected("cpu", 0.7))
        await bus.publish(subject, detected("cpu", 0.8))  # after the one that completed it

        done = await finished(stub, key, run_id)
        history = await stub.GetRunHistory(pb.GetRunHistoryRequest(run_id=run_id), metadata=key)

    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
    assert json_format.MessageToDict(done.outputs) == {"event": wanted, "score": 0.7}
    assert [(s.step_id, s.state) for s in history.steps] == [
        ("confirmed", pb.STEP_STATE_SUCCEEDED),
        ("after", pb.STEP_STATE_SUCCEEDED),
    ]
    output = json_format.MessageToDict(history.steps[0].output)
    assert (output["subject"], output["type"], output["data"]["source"]) == (subject, TYPE, "cpu")


async def test_a_wait_with_no_matching_event_times_out_into_the_on_failure_path(
    orchestrator: tuple[pb_grpc.OrchestratorServiceStub, Any, EventBus],
) -> None:
    stub, key, bus = orchestrator
    subject = f"nexus.testwaits.{uuid.uuid4().hex}"
    run_id = await start(stub, key, f"w{uuid.uuid4().hex[:8]}", subject, 0.5)
    await bus.publish(subject, detected("disk", 0.9))  # does not match

    done = await finished(stub, key, run_id)
    history = await stub.GetRunHistory(pb.GetRunHistoryRequest(run_id=run_id), metadata=key)

    assert done.state == pb.RUN_STATE_FAILED
    assert done.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "before the timeout" in done.error.message
    assert [(s.step_id, s.state) for s in history.steps] == [
        ("confirmed", pb.STEP_STATE_FAILED),
        ("gave_up", pb.STEP_STATE_SUCCEEDED),
    ]


async def test_a_wait_on_a_subject_no_stream_holds_is_refused_at_registration(
    orchestrator: tuple[pb_grpc.OrchestratorServiceStub, Any, EventBus],
) -> None:
    stub, key, _ = orchestrator
    definition = CONFIRM.format(name="nowhere", subject="nexus.nowhere.seen", timeout=1)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=definition), metadata=key)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "steps[0].wait_event.subject: no JetStream stream holds nexus.nowhere.seen" in (
        refused.value.details() or ""
    )


async def test_an_event_larger_than_a_step_output_may_be_fails_the_step(
    start_service: StartService, nexus_settings: Any, nats_client: Any
) -> None:
    made = connected(start_service, nexus_settings, nats_client, max_output_bytes=1000)
    async with made as (stub, key, bus):
        subject = f"nexus.testwaits.{uuid.uuid4().hex}"
        run_id = await start(stub, key, f"w{uuid.uuid4().hex[:8]}", subject, 60)
        large = anomaly_events.AnomalyDetected(source="cpu", score=0.9, detector="x" * 2000)
        await bus.publish(subject, large)
        done = await finished(stub, key, run_id)

    assert done.state == pb.RUN_STATE_FAILED
    assert done.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


SINCE = """\
name: {name}
steps:
  - id: gate
    wait_signal: {{name: go, timeout_s: 60}}
  - id: confirmed
    wait_event:
      subject: {subject}
      type: nexus.anomaly.v1.AnomalyDetected
      condition: "event.data.source == 'cpu'"
      timeout_s: 1
{since}outputs:
  score: "${{steps.confirmed.output.data.score}}"
"""


@pytest.mark.parametrize(
    ("since", "score"), [("gate", 0.5), ("run", 0.5), ("step", None), ("", None)]
)
async def test_since_reads_the_events_stored_from_an_earlier_step_or_the_runs_start(
    orchestrator: Connected, since: str, score: float | None
) -> None:
    # The event comes while the run waits at `gate`, before `confirmed` begins: only a wait
    # reading from `gate` (or the run's start) sees it; an event before the run is never seen.
    stub, key, bus = orchestrator
    subject = f"nexus.testwaits.{uuid.uuid4().hex}"
    name = f"w{uuid.uuid4().hex[:8]}"
    text = SINCE.format(
        name=name, subject=subject, since=f"      since: {since}\n" if since else ""
    )
    await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=text), metadata=key)
    await bus.publish(subject, detected("cpu", 0.1))  # before the run
    started = await stub.StartRun(pb.StartRunRequest(workflow=name), metadata=key)
    run_id = str(started.run.run_id)

    async def gated() -> bool:
        run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=key)).run
        return bool(run.state == pb.RUN_STATE_WAITING and run.current_step == "gate")

    await eventually(gated)
    await bus.publish(subject, detected("cpu", 0.5))  # after `gate` began
    await stub.SignalRun(pb.SignalRunRequest(run_id=run_id, signal="go"), metadata=key)
    done = await finished(stub, key, run_id)

    if score is None:
        assert done.state == pb.RUN_STATE_FAILED
        assert done.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    else:
        assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
        assert json_format.MessageToDict(done.outputs) == {"score": score}


@pytest.mark.parametrize("since", ["confirmed", "later", "nowhere"])
def test_since_must_name_the_run_or_a_step_before_the_wait(since: str) -> None:
    text = SINCE.format(name="w", subject="nexus.a", since=f"      since: {since}\n")
    text = text.replace("outputs:", "  - id: later\n    sleep: {seconds: 0}\noutputs:")

    with pytest.raises(InvalidArgument) as caught:
        parse_definition(text)

    found = [(v.field, v.description) for v in caught.value.violations]
    assert (
        "steps[1].wait_event.since",
        f"since {since!r}: 'step', 'run' or the id of a step before this one",
    ) in [(f, d.split(" (line")[0]) for f, d in found], found
