"""Triggers: bad trigger definitions and their errors, cron ticks and misfires (no network); then
event and cron triggers over a real NATS and real orchestrator replicas: one run per matching
event however often it comes, none for an event that fails the condition or whose owner key
was revoked, and one run per cron tick across two replicas."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from nats.aio.client import Client
from nats.js import api
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from nexus.api.anomaly.v1 import events_pb2 as anomaly_events
from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.auth import key_id_of, open_key_store
from nexus.common.errors import InvalidArgument
from nexus.common.events import EventBus
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually
from nexus.orchestrator.definitions import Trigger, parse_definition
from nexus.orchestrator.server import create
from nexus.orchestrator.settings import OrchestratorSettings
from nexus.orchestrator.triggers.ticks import Due, due, latest_tick

Metadata = tuple[tuple[str, str], ...]

STEPS = "steps:\n  - {id: nap, sleep: {seconds: 0}}\n"


def violations(err: InvalidArgument) -> list[tuple[str, str]]:
    return [(v.field, v.description) for v in err.violations]


def with_trigger(trigger: str, inputs: str = "") -> str:
    return f"name: t\n{inputs}triggers:\n{trigger}{STEPS}"


EVENT = (
    "  - id: hot\n    event: {subject: nexus.anomaly.detected, "
    "type: nexus.anomaly.v1.AnomalyDetected"
)


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (
            with_trigger("  - id: nightly\n    cron: {schedule: '61 * * * *'}\n"),
            "triggers[0].cron.schedule",
            "not a cron schedule",
        ),
        (
            with_trigger(
                "  - id: nightly\n    cron: {schedule: '0 2 * * *', timezone: Mars/Base}\n"
            ),
            "triggers[0].cron.timezone",
            "unknown time zone 'Mars/Base'",
        ),
        (
            with_trigger("  - id: nightly\n    cron: {schedule: '0 2 * * *', misfire: catch_up}\n"),
            "triggers[0].cron.misfire",
            "line 4",
        ),
        (
            with_trigger(
                "  - id: hot\n    event: {subject: 'nexus.anomaly.>.x', "
                "type: nexus.anomaly.v1.AnomalyDetected}\n"
            ),
            "triggers[0].event.subject",
            "does not match",
        ),
        (
            with_trigger(
                "  - id: hot\n    event: {subject: other.detected, "
                "type: nexus.anomaly.v1.AnomalyDetected}\n"
            ),
            "triggers[0].event.subject",
            "does not match",
        ),
        (
            with_trigger(f"{EVENT}, condition: 'event.data.score >'}}\n"),
            "triggers[0].event.condition",
            "bad expression",
        ),
        (
            with_trigger(f"{EVENT}, condition: 'steps.nap.output == 1'}}\n"),
            "triggers[0].event.condition",
            "a trigger reads only event, not 'steps'",
        ),
        (
            with_trigger(
                "  - id: hot\n    event: {subject: nexus.anomaly.detected, "
                "type: nexus.anomaly.v1.Nothing}\n"
            ),
            "triggers[0].event.type",
            "unknown message type",
        ),
        (
            with_trigger(f"{EVENT}}}\n  - id: hot\n    cron: {{schedule: '0 2 * * *'}}\n"),
            "triggers[1].id",
            "duplicate trigger id 'hot'",
        ),
        (
            with_trigger(f"{EVENT}}}\n    cron: {{schedule: '0 2 * * *'}}\n"),
            "triggers[0]",
            "a trigger has exactly one kind: event, cron",
        ),
        (
            with_trigger(f"{EVENT}}}\n", "inputs:\n  source: {type: string, required: true}\n"),
            "triggers[0].inputs",
            "the required input 'source' gets no value",
        ),
        (
            with_trigger(
                f"{EVENT}}}\n    inputs: {{source: '${{tick.time}}'}}\n",
                "inputs:\n  source: {type: string}\n",
            ),
            "triggers[0].inputs.source",
            "a trigger reads only event, not 'tick'",
        ),
    ],
)
def test_bad_triggers_get_clear_errors(text: str, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_definition(text)

    assert violations(caught.value)[0][0] == field
    assert words in violations(caught.value)[0][1]


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


def test_a_schedule_ticks_in_its_time_zone_across_daylight_saving() -> None:
    berlin = Trigger("daily", "cron", {"schedule": "0 9 * * *", "timezone": "Europe/Berlin"})

    assert latest_tick(berlin, utc(2026, 1, 15, 12)) == utc(2026, 1, 15, 8)  # CET, UTC+1
    assert latest_tick(berlin, utc(2026, 7, 15, 12)) == utc(2026, 7, 15, 7)  # CEST, UTC+2
    assert latest_tick(berlin, utc(2026, 7, 15, 7)) == utc(2026, 7, 15, 7)  # a tick is due at it


def test_ticks_missed_in_a_downtime_fire_once_or_are_skipped() -> None:
    hourly = {"schedule": "0 * * * *", "misfire_grace_s": 60}
    fire_once = Trigger("h", "cron", hourly)
    skip = Trigger("h", "cron", {**hourly, "misfire": "skip"})
    down_since, back = utc(2026, 1, 1, 10), utc(2026, 1, 1, 13, 30)

    late = due(fire_once, down_since, back)
    skipped = due(skip, down_since, back)
    on_time = due(skip, down_since, utc(2026, 1, 1, 13, 0, 30))

    assert late == Due(tick=utc(2026, 1, 1, 13), fire=True, missed=2)
    assert skipped == Due(tick=utc(2026, 1, 1, 13), fire=False, missed=3)
    assert on_time == Due(tick=utc(2026, 1, 1, 13), fire=True, missed=2)
    assert due(fire_once, utc(2026, 1, 1, 13), back) is None  # handled already
    assert due(skip, utc(2026, 1, 1, 12), utc(2026, 1, 1, 13, 0, 30)) == Due(
        tick=utc(2026, 1, 1, 13), fire=True, missed=0
    )


def test_a_replica_that_falls_a_few_ticks_behind_fires_each_of_them() -> None:
    every_second = Trigger("s", "cron", {"schedule": "* * * * * *", "misfire": "skip"})
    last = utc(2026, 1, 1, 10)

    assert due(every_second, last, last + 3.2) == Due(tick=last + 1, fire=True, missed=0)


# Over a real NATS and real orchestrator replicas.


@pytest.fixture
async def admin_key(nexus_settings: NexusSettings) -> str:
    return await make_key(nexus_settings, "*")


@pytest.fixture
def start_orchestrator(start_service: StartService) -> Any:
    async def start() -> ServiceHost:
        settings = OrchestratorSettings(grpc_port=0, ack_wait_s=2.0, queue_sample_s=0.1)
        return await start_service(create, settings)

    return start


@contextlib.asynccontextmanager
async def stub_of(host: ServiceHost) -> AsyncIterator[pb_grpc.OrchestratorServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        yield pb_grpc.OrchestratorServiceStub(channel)


def bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


class Events:
    """A stream of this test's own (`nexus.<area>.>`), and anomalies published on it. Its
    duplicate window is short, so that an event published again a moment later is stored twice
    (as it would be after JetStream's two minutes) and reaches the trigger twice."""

    def __init__(self, nc: Client) -> None:
        self.area = f"trig{uuid.uuid4().hex[:8]}"
        self.stream = self.area.upper()
        self.bus = EventBus(nc, "test")
        self.published = 0
        self.workflows: list[str] = []

    async def create(self) -> None:
        config = api.StreamConfig(
            name=self.stream,
            subjects=[f"nexus.{self.area}.>"],
            storage=api.StorageType.MEMORY,
            duplicate_window=0.1,
        )
        await self.bus.js.add_stream(config)

    async def publish(self, event_id: str, score: float, source: str = "cpu") -> None:
        message = anomaly_events.AnomalyDetected(source=source, score=score)
        await self.bus.publish(f"nexus.{self.area}.detected", message, event_id=event_id)
        self.published += 1

    async def handled(self, durable: str) -> None:
        """Waits until the trigger's consumer acknowledged every event published so far."""

        async def acked() -> bool:
            try:
                info = await self.bus.js.consumer_info(self.stream, durable)
            except NotFoundError:  # not made yet: the replicas make it as they see the version
                return False
            return bool(info.ack_floor.stream_seq >= self.published and not info.num_ack_pending)

        await eventually(acked, timeout_s=20)

    def workflow(self, name: str, condition: str = "event.data.score > 0.9") -> str:
        self.workflows.append(name)
        return (
            f"name: {name}\n"
            "inputs:\n  source: {type: string, required: true}\n  score: {type: number}\n"
            "triggers:\n"
            "  - id: hot\n"
            f"    event: {{subject: nexus.{self.area}.detected, "
            f"type: nexus.anomaly.v1.AnomalyDetected, condition: '{condition}'}}\n"
            "    inputs: {source: '${event.data.source}', score: '${event.data.score}'}\n"
            f"{STEPS}"
            "outputs: {source: '${inputs.source}'}\n"
        )


@pytest.fixture
async def events(
    nats_client: Client, start_orchestrator: Any, admin_key: str
) -> AsyncIterator[Events]:
    made = Events(nats_client)
    await made.create()
    yield made
    # The NATS server is shared: a version without triggers retires this test's consumers.
    async with stub_of(await start_orchestrator()) as stub:
        for name in made.workflows:
            await stub.RegisterWorkflow(
                pb.RegisterWorkflowRequest(definition=f"name: {name}\n{STEPS}"),
                metadata=bearer(admin_key),
            )
    await made.bus.js.delete_stream(made.stream)


async def runs_of(stub: pb_grpc.OrchestratorServiceStub, workflow: str, key: str) -> list[pb.Run]:
    reply = await stub.ListRuns(
        pb.ListRunsRequest(workflow=workflow, page_size=1000), metadata=bearer(key)
    )
    return list(reply.runs)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"nexus_workflow_{name}", labels) or 0.0


def queue(name: str, prefix: str = "orchestrator-trigger-") -> float | None:
    labels = {"queue": f"{prefix}{name}"}
    return REGISTRY.get_sample_value("nexus_workflow_queue_pending", labels)


def fired(workflow: str, outcome: str) -> float:
    return metric("triggers_total", workflow=workflow, trigger="hot", outcome=outcome)


async def test_a_matching_event_starts_one_run_however_often_it_comes_and_others_none(
    start_orchestrator: Any, events: Events, admin_key: str
) -> None:
    name = f"hot-{events.area}"
    durable = f"orchestrator-trigger-{name}-v1-hot"
    first = await start_orchestrator()
    await events.publish("e-early", 0.99)  # before the workflow: not its event
    async with stub_of(first) as stub:
        await stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=events.workflow(name)), metadata=bearer(admin_key)
        )
        await events.publish("e-hot", 0.97)
        await events.publish("e-cold", 0.2)
        await events.handled(durable)
    await first.stop()
    second = await start_orchestrator()  # remembers no event id: only the run's id dedupes
    async with stub_of(second) as stub:
        await asyncio.sleep(0.5)  # past the stream's duplicate window
        await events.publish("e-hot", 0.97)  # the same event again, stored again
        await events.handled(durable)
        runs = await runs_of(stub, name, admin_key)
        done = [await finished(stub, run.run_id, admin_key) for run in runs]
        await eventually(lambda: metric("runs_total", workflow=name, state="SUCCEEDED") == 1)

    assert [(r.trigger.kind, r.trigger.detail) for r in runs] == [("event", "hot:e-hot")]
    assert [(r.state, json_format.MessageToDict(r.outputs)) for r in done] == [
        (pb.RUN_STATE_SUCCEEDED, {"source": "cpu"})
    ]
    assert json_format.MessageToDict(done[0].inputs) == {"source": "cpu", "score": 0.97}
    assert (fired(name, "started"), fired(name, "filtered"), fired(name, "duplicate")) == (1, 1, 1)
    assert metric("runs_total", workflow=name, state="STARTED") == 1
    assert metric("step_seconds_count", workflow=name, kind="sleep", state="SUCCEEDED") == 1


async def finished(stub: pb_grpc.OrchestratorServiceStub, run_id: str, key: str) -> pb.Run:
    last = None
    async for change in stub.WatchRun(
        pb.WatchRunRequest(run_id=run_id), metadata=bearer(key), timeout=30
    ):
        last = change.run
    assert last is not None
    return last


async def test_a_revoked_key_s_triggers_stop_firing(
    start_orchestrator: Any, events: Events, admin_key: str, nexus_settings: NexusSettings
) -> None:
    owner = await make_key(nexus_settings, "orchestrator:admin", "orchestrator:invoke")
    name = f"revoked-{events.area}"
    durable = f"orchestrator-trigger-{name}-v1-hot"
    host = await start_orchestrator()
    async with stub_of(host) as stub:
        await stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=events.workflow(name, "true")),
            metadata=bearer(owner),
        )
        await events.publish("before", 0.5)
        await events.handled(durable)
        async with open_key_store(nexus_settings, "test") as keys:
            await keys.revoke(key_id_of(owner) or "")
        await events.publish("after", 0.5)
        await events.handled(durable)
        runs = await runs_of(stub, name, admin_key)

    assert [r.trigger.detail for r in runs] == ["hot:before"]
    assert (fired(name, "started"), fired(name, "refused")) == (1, 1)


async def test_a_new_version_s_triggers_replace_the_old_ones(
    start_orchestrator: Any, events: Events, admin_key: str
) -> None:
    name = f"versions-{events.area}"
    host = await start_orchestrator()
    async with stub_of(host) as stub:
        for condition in ("event.data.score > 0.9", "event.data.score > 0.5"):
            await stub.RegisterWorkflow(
                pb.RegisterWorkflowRequest(definition=events.workflow(name, condition)),
                metadata=bearer(admin_key),
            )
        await events.publish("warm", 0.7)
        await events.handled(f"orchestrator-trigger-{name}-v2-hot")
        runs = await runs_of(stub, name, admin_key)

        async def old_consumer_gone() -> bool:
            names = await events.bus.js.consumers_info(events.stream)
            return all(not info.name.endswith(f"{name}-v1-hot") for info in names)

        await eventually(old_consumer_gone, timeout_s=10)

        def queues_shown() -> bool:  # the new version's queue, empty; the old one's, gone
            return queue(f"{name}-v2-hot") == 0 and queue(f"{name}-v1-hot") is None

        await eventually(queues_shown)

    assert [(r.version, r.trigger.detail) for r in runs] == [(2, "hot:warm")]
    assert queue("orchestrator-advance", prefix="") is not None


async def test_a_deleted_workflow_s_triggers_stop_on_every_replica_and_its_runs_finish(
    start_orchestrator: Any, events: Events, admin_key: str, nexus_settings: NexusSettings
) -> None:
    reader = await make_key(nexus_settings, "orchestrator:read")
    name = f"deleted-{events.area}"
    durable = f"orchestrator-trigger-{name}-v1-hot"
    holding = events.workflow(name, "true").replace(
        STEPS, "steps:\n  - {id: hold, wait_signal: {name: go}}\n"
    )
    replicas = [await start_orchestrator(), await start_orchestrator()]
    async with stub_of(replicas[0]) as stub, stub_of(replicas[1]) as other:
        admin = bearer(admin_key)
        await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=holding), metadata=admin)
        await events.publish("before", 0.5)
        await events.handled(durable)
        [in_flight] = await runs_of(stub, name, admin_key)
        with pytest.raises(grpc.aio.AioRpcError) as narrow:
            await stub.DeleteWorkflow(pb.DeleteWorkflowRequest(name=name), metadata=bearer(reader))
        deleted = await other.DeleteWorkflow(pb.DeleteWorkflowRequest(name=name), metadata=admin)

        async def consumer_gone() -> bool:
            infos = await events.bus.js.consumers_info(events.stream)
            return all(info.name != durable for info in infos)

        await eventually(consumer_gone, timeout_s=10)
        refused = []
        for call in (
            stub.GetWorkflow(pb.GetWorkflowRequest(name=name), metadata=admin),
            stub.StartRun(pb.StartRunRequest(workflow=name), metadata=admin),
            stub.StartRun(pb.StartRunRequest(workflow=name, version=1), metadata=admin),
            stub.DeleteWorkflow(pb.DeleteWorkflowRequest(name=name), metadata=admin),
            stub.DeleteWorkflow(pb.DeleteWorkflowRequest(name="never-was"), metadata=admin),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            refused.append(caught.value.code())
        listed = await stub.ListWorkflows(pb.ListWorkflowsRequest(page_size=500), metadata=admin)
        kept = await stub.GetWorkflow(pb.GetWorkflowRequest(name=name, version=1), metadata=admin)
        signal = pb.SignalRunRequest(run_id=in_flight.run_id, signal="go")
        await other.SignalRun(signal, metadata=admin)
        done = await finished(stub, in_flight.run_id, admin_key)
        again = await stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=holding), metadata=admin
        )

    assert narrow.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert deleted.last_version == 1
    assert refused == [grpc.StatusCode.NOT_FOUND] * 5
    assert name not in [w.name for w in listed.workflows]
    assert kept.workflow.version == 1
    assert (done.state, done.version) == (pb.RUN_STATE_SUCCEEDED, 1)
    assert again.workflow.version == 2


async def test_an_event_trigger_needs_one_stream_for_its_subject(
    start_orchestrator: Any, events: Events, admin_key: str
) -> None:
    host = await start_orchestrator()
    nowhere = events.workflow("nowhere").replace(f"nexus.{events.area}.", "nexus.nowhere.")
    events.workflows.remove("nowhere")  # never registered
    async with stub_of(host) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RegisterWorkflow(
                pb.RegisterWorkflowRequest(definition=nowhere), metadata=bearer(admin_key)
            )
        with pytest.raises(grpc.aio.AioRpcError) as bad_cron:
            await stub.RegisterWorkflow(
                pb.RegisterWorkflowRequest(
                    definition=with_trigger("  - id: c\n    cron: {schedule: 'every day'}\n")
                ),
                metadata=bearer(admin_key),
            )

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(
        "triggers[0].event.subject: no JetStream stream holds nexus.nowhere.detected"
    )
    assert bad_cron.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "triggers[0].cron.schedule: not a cron schedule: 'every day'" in (
        bad_cron.value.details() or ""
    )


EVERY_SECOND = """\
name: {name}
inputs:
  at: {{type: string, required: true}}
triggers:
  - id: tick
    cron: {{schedule: '* * * * * *', timezone: Europe/Berlin}}
    inputs: {{at: '${{tick.time}}'}}
steps:
  - {{id: nap, sleep: {{seconds: 0}}}}
"""


async def runs_at_least(
    stub: pb_grpc.OrchestratorServiceStub, name: str, key: str, count: int
) -> None:
    async def fired() -> bool:
        return len(await runs_of(stub, name, key)) >= count

    await eventually(fired, timeout_s=20)


async def test_two_replicas_fire_a_cron_schedule_once_per_tick(
    start_orchestrator: Any, admin_key: str
) -> None:
    name = f"cron-{uuid.uuid4().hex[:8]}"
    hosts = [await start_orchestrator(), await start_orchestrator()]
    async with stub_of(hosts[0]) as stub:
        await stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=EVERY_SECOND.format(name=name)),
            metadata=bearer(admin_key),
        )

        await runs_at_least(stub, name, admin_key, 3)
        await hosts[1].stop()  # the other replica goes on alone, missing no tick
        await runs_at_least(stub, name, admin_key, 6)
        # A version without the trigger stops it (and leaves the shared NATS quiet).
        await stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=f"name: {name}\n{STEPS}"),
            metadata=bearer(admin_key),
        )
        runs = await runs_of(stub, name, admin_key)

    ticks = Counter(run.trigger.detail.removeprefix("tick:") for run in runs)
    seconds = sorted(datetime.fromisoformat(tick).timestamp() for tick in ticks)
    assert set(ticks.values()) == {1}
    assert seconds == [seconds[0] + i for i in range(len(seconds))]  # no tick left out
    assert {datetime.fromisoformat(tick).utcoffset() for tick in ticks} <= {
        datetime.fromisoformat("2026-12-03T00:00:00+01:00").utcoffset(),
        datetime.fromisoformat("2026-07-03T00:00:00+02:00").utcoffset(),
    }
    assert {json_format.MessageToDict(r.inputs)["at"] for r in runs} == set(ticks)


async def test_ticks_missed_while_no_replica_ran_give_one_run_and_are_counted(
    start_orchestrator: Any, admin_key: str
) -> None:
    name = f"down-{uuid.uuid4().hex[:8]}"
    definition = EVERY_SECOND.format(name=name).replace(
        "timezone: Europe/Berlin", "misfire: fire_once, misfire_grace_s: 0.5"
    )
    first = await start_orchestrator()
    async with stub_of(first) as stub:
        await stub.RegisterWorkflow(
            pb.RegisterWorkflowRequest(definition=definition), metadata=bearer(admin_key)
        )
        await runs_at_least(stub, name, admin_key, 2)
        before = len(await runs_of(stub, name, admin_key))
    await first.stop()
    await asyncio.sleep(3)  # no replica: about three ticks go by
    second = await start_orchestrator()
    async with stub_of(second) as stub:
        await runs_at_least(stub, name, admin_key, before + 2)
        await stub.RegisterWorkflow(  # stops the schedule
            pb.RegisterWorkflowRequest(definition=f"name: {name}\n{STEPS}"),
            metadata=bearer(admin_key),
        )
        runs = await runs_of(stub, name, admin_key)

    ticks = Counter(run.trigger.detail.removeprefix("tick:") for run in runs)
    seconds = sorted(datetime.fromisoformat(tick).timestamp() for tick in ticks)
    gaps = [b - a - 1 for a, b in itertools.pairwise(seconds) if b - a > 1]
    assert set(ticks.values()) == {1}
    assert len(gaps) == 1  # the downtime: its ticks gave one run, at its end
    assert gaps[0] >= 2
    assert metric("triggers_total", workflow=name, trigger="tick", outcome="missed") == gaps[0]
