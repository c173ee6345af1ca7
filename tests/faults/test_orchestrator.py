"""The orchestrator SIGKILLed twice in the middle of a run's calls: the run completes on the
restarted process, each call was made under one idempotency key (attempt 1 of each step), so the
callee applied each effect once: two trainings, two model versions, one event."""

from __future__ import annotations

import asyncio
import json

import grpc
import nats
import pytest
from anomaly_testing import cloud, points, unique
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct

from nexus.api.anomaly.v1.events_pb2 import AnomalyDetected
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.events import DAY_S, MIB, EventBus, Stream
from nexus.common.launcher import Platform
from nexus.common.testing.launcher import StartPlatform
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.timeout(300)

TRAIN = {
    "name": "${inputs.name}",
    "algorithm": "ALGORITHM_ISOLATION_FOREST",
    "points": "${inputs.points}",
    "parameters": {"n_estimators": "1500"},
}
RETRAIN = {
    "name": "retrain",
    "inputs": {"name": {"type": "string"}, "points": {"type": "array"}},
    "steps": [
        {"id": "first", "call": {"method": "nexus.anomaly.v1.AnomalyService/TrainDetector",
                                 "request": TRAIN}},
        {"id": "second", "call": {"method": "nexus.anomaly.v1.AnomalyService/TrainDetector",
                                  "request": TRAIN}},
        {"id": "announce", "publish": {
            "subject": "nexus.anomaly.retrained",
            "type": "nexus.anomaly.v1.AnomalyDetected",
            "data": {"source": "${inputs.name}",
                     "model_version": "${steps.second.output.version.version}"},
        }},
    ],
}  # fmt: skip


async def test_a_run_whose_orchestrator_is_killed_twice_applies_each_effect_once(
    start_platform: StartPlatform,
) -> None:
    platform = await start_platform("anomaly", NEXUS_ORCHESTRATOR_ACK_WAIT_S="2")
    name = unique()
    platform.services = ["orchestrator"]  # its backends: the anomaly service running
    run_id = await start_run(platform, name)
    for step in ("first", "second"):
        await kill_during(platform, run_id, step)
    await check_each_effect_once(platform, name, await finished(platform, run_id))


async def test_a_run_whose_replica_is_killed_is_taken_over_by_the_other(
    start_platform: StartPlatform,
) -> None:
    """Two replicas: the one that started the run (and drives it, ADR 0053) is SIGKILLed in
    the middle of a call and not restarted; the other takes the run over once its beats stop,
    and the run completes with each effect applied once."""
    platform = await start_platform("anomaly", NEXUS_ORCHESTRATOR_ACK_WAIT_S="2")
    name = unique()
    platform.services = ["orchestrator"]
    await platform.start_services()  # the replica that goes on
    run_id = await start_run(platform, name)  # through a second replica, which drives it
    await kill_during(platform, run_id, "first", restart=False)
    await check_each_effect_once(platform, name, await finished(platform, run_id))
    survivor = platform.children[-1].log_path.read_text()
    assert f"run {run_id}: its replica" in survivor
    assert "taken over" in survivor


async def check_each_effect_once(platform: Platform, name: str, done: Finished) -> None:
    """Two trainings (one model version each) and one event: no effect applied twice."""
    anomaly = platform.children[0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{anomaly.port}") as channel:
        model = await models_grpc.ModelRegistryServiceStub(channel).GetModel(
            models_pb.GetModelRequest(service="anomaly", name=name)
        )
    assert platform.nats is not None
    nc = await nats.connect(platform.nats.url)
    info = await nc.jetstream().stream_info("ANOMALY", subjects_filter="nexus.anomaly.retrained")
    await nc.close()
    assert done.run.state == pb.RUN_STATE_SUCCEEDED, done.run.error
    assert [(s.step_id, s.attempts) for s in done.steps] == [
        ("first", 1),
        ("second", 1),
        ("announce", 1),
    ]
    assert sorted(v.version for v in model.model.versions) == ["1", "2"]
    assert (info.state.subjects or {}).get("nexus.anomaly.retrained") == 1


async def start_run(platform: Platform, name: str) -> str:
    await platform.start_services()
    inputs = Struct()
    inputs.update(
        {"name": name, "points": [json_format.MessageToDict(p) for p in points(cloud(1000, 8))]}
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.children[-1].port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=json.dumps(RETRAIN)))
        started = await stub.StartRun(pb.StartRunRequest(workflow="retrain", inputs=inputs))
    return str(started.run.run_id)


async def kill_during(platform: Platform, run_id: str, step: str, *, restart: bool = True) -> None:
    """SIGKILLs the newest orchestrator once `step`'s call is in flight, and starts another
    (unless not `restart`)."""
    orchestrator = platform.children[-1]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator.port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)

        async def calling() -> bool:
            run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
            return bool(run.current_step == step)

        await eventually(calling, timeout_s=120)
    orchestrator.process.kill()  # mid-call: no ack, no record written after the call
    orchestrator.process.wait(10)
    platform.children.remove(orchestrator)
    if restart:
        await platform.start_services()


class Finished:
    def __init__(self, run: pb.Run, steps: list[pb.StepExecution]) -> None:
        self.run, self.steps = run, steps


async def finished(platform: Platform, run_id: str) -> Finished:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.children[-1].port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        watch = stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=240)
        run = [reply.run async for reply in watch][-1]
        history = await stub.GetRunHistory(pb.GetRunHistoryRequest(run_id=run_id))
    return Finished(run, list(history.steps))


FANNED = {
    "name": "fanned",
    "inputs": {"names": {"type": "array"}, "points": {"type": "array"}},
    "steps": [
        {"id": "each", "map": {"items": "inputs.names", "concurrency": 2, "steps": [
            {"id": "train_item", "call": {
                "method": "nexus.anomaly.v1.AnomalyService/TrainDetector",
                "request": {**TRAIN, "name": "${item}", "parameters": {"n_estimators": "600"}},
            }},
        ]}},
    ],
}  # fmt: skip


async def test_a_map_whose_orchestrator_is_killed_trains_each_item_once(
    start_platform: StartPlatform,
) -> None:
    platform = await start_platform("anomaly", NEXUS_ORCHESTRATOR_ACK_WAIT_S="2")
    names = [unique() for _ in range(4)]
    anomaly = platform.children[0]
    platform.services = ["orchestrator"]  # its backends: the anomaly service running
    await platform.start_services()
    inputs = Struct()
    rows = [json_format.MessageToDict(p) for p in points(cloud(1000, 8))]
    inputs.update({"names": names, "points": rows})
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.children[-1].port}") as ch:
        stub = pb_grpc.OrchestratorServiceStub(ch)
        await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=json.dumps(FANNED)))
        started = await stub.StartRun(pb.StartRunRequest(workflow="fanned", inputs=inputs))

        async def items_training() -> bool:
            listed = await stub.ListRuns(pb.ListRunsRequest(workflow="fanned"))
            return any(r.current_step == "train_item" for r in listed.runs)

        await eventually(items_training, timeout_s=120)
    orchestrator = platform.children[-1]
    orchestrator.process.kill()  # items in flight: their calls, and the parent waiting
    orchestrator.process.wait(10)
    platform.children.remove(orchestrator)
    await platform.start_services()
    done = await finished(platform, started.run.run_id)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{anomaly.port}") as channel:
        registry = models_grpc.ModelRegistryServiceStub(channel)
        versions = [
            sorted(v.version for v in (await registry.GetModel(
                models_pb.GetModelRequest(service="anomaly", name=name)
            )).model.versions)
            for name in names
        ]  # fmt: skip
    assert done.run.state == pb.RUN_STATE_SUCCEEDED, done.run.error
    outputs = json_format.MessageToDict(done.run.outputs) if done.run.outputs else {}
    assert versions == [["1"]] * len(names), outputs  # each item trained once


WAITS = Stream("TESTWAITS", ("nexus.testwaits.>",), max_age_s=DAY_S, max_bytes=64 * MIB)
CONFIRM = {
    "name": "confirm",
    "inputs": {"source": {"type": "string"}},
    "steps": [
        {"id": "confirmed", "wait_event": {
            "subject": "nexus.testwaits.seen",
            "type": "nexus.anomaly.v1.AnomalyDetected",
            "condition": "event.data.source == inputs.source",
        }},
    ],
    "outputs": {"event": "${steps.confirmed.output.id}"},
}  # fmt: skip


async def test_a_wait_for_an_event_survives_a_sigkill_and_a_nats_restart(
    start_platform: StartPlatform,
) -> None:
    """The orchestrator is SIGKILLed while its run waits, NATS restarts, and the events come
    while no orchestrator runs: the restarted one completes the step with that event (when it
    starts: no poll comes in the test's time)."""
    platform = await start_platform(
        "orchestrator",
        NEXUS_ORCHESTRATOR_ACK_WAIT_S="2",
        NEXUS_ORCHESTRATOR_WAIT_EVENT_POLL_S="3600",
    )
    assert platform.nats is not None
    nc = await nats.connect(platform.nats.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    bus = EventBus(nc, "test")
    await bus.ensure_streams(WAITS)  # before the workflow that waits on it is registered
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.children[-1].port}") as ch:
        stub = pb_grpc.OrchestratorServiceStub(ch)
        await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=json.dumps(CONFIRM)))
        inputs = Struct()
        inputs.update({"source": "cpu"})
        started = await stub.StartRun(pb.StartRunRequest(workflow="confirm", inputs=inputs))
        run_id = started.run.run_id

        async def waiting() -> bool:
            run = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
            return bool(run.state == pb.RUN_STATE_WAITING)

        await eventually(waiting, timeout_s=60)

    async def advance_acknowledged() -> bool:  # else its redelivery would find the event
        info = await nc.jetstream().consumer_info("ORCHESTRATOR", "orchestrator-advance")
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)

    await eventually(advance_acknowledged, timeout_s=30)
    orchestrator = platform.children.pop()
    orchestrator.process.kill()
    orchestrator.process.wait(10)
    # Stopped, not killed: a SIGKILL may lose the advance's acknowledgement, whose
    # redelivery would then find the event before the restarted replica looks by itself.
    await asyncio.to_thread(platform.nats.restart)
    await bus.publish("nexus.testwaits.seen", AnomalyDetected(source="disk", score=1))
    wanted = await bus.publish("nexus.testwaits.seen", AnomalyDetected(source="cpu", score=1))
    await platform.start_services()
    done = await finished(platform, run_id)
    await nc.close()
    assert done.run.state == pb.RUN_STATE_SUCCEEDED, done.run.error
    assert json_format.MessageToDict(done.run.outputs) == {"event": wanted}
    assert [(s.step_id, s.attempts) for s in done.steps] == [("confirmed", 0)]
