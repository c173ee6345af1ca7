"""EventBus: CloudEvents over JetStream, durable work sharing, watches, restarts, traces, dead
letters."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import BadSubjectError
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from nexus.api.anomaly.v1.events_pb2 import AnomalyDetected
from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from nexus.common.events import (
    DAY_S,
    DEAD_LETTERS,
    MIB,
    REPLAYED_FROM_HEADER,
    Consumer,
    DeadLetter,
    DeadLetters,
    Event,
    EventBus,
    Follower,
    Stream,
    parse_event,
)
from nexus.common.events._consumer import HEARTBEAT_S
from nexus.common.nats import NexusClient, close, connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.common.testing.events import Recorder as EventRecorder
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.integration

STREAM = Stream("EVENTS_TEST", ("nexus.eventstest.>",), max_age_s=DAY_S, max_bytes=64 * MIB)
"""The stream these tests own, as a service owns its area's."""
Recorder = EventRecorder[AnomalyDetected]


@pytest.fixture
async def bus(nats_client: Client) -> EventBus:
    bus = EventBus(nats_client, "nexus/test")
    await bus.ensure_streams(STREAM)
    return bus


@pytest.fixture
def subject() -> str:
    """A subject of the ANOMALY stream that no other test uses."""
    return f"nexus.eventstest.t{uuid.uuid4().hex}"


def durable() -> str:
    return f"test_{uuid.uuid4().hex}"


def anomaly(point_id: str) -> AnomalyDetected:
    return AnomalyDetected(source="cpu", point_id=point_id, score=0.9, threshold=0.5)


async def consume(
    bus: EventBus, subject: str, handler: Recorder, name: str = "", **kwargs: Any
) -> Consumer:
    return await bus.consume(
        subject, AnomalyDetected, handler, durable=name or durable(), stream=STREAM.name, **kwargs
    )


async def test_publish_then_consume_delivers_a_cloud_event(bus: EventBus, subject: str) -> None:
    seen = Recorder()
    event_id = await bus.publish(subject, anomaly("p1"), subject_hint="cpu")
    consumer = await consume(bus, subject, seen)
    await eventually(lambda: len(seen.events) == 1)
    await consumer.stop()

    event = seen.events[0]
    assert (event.id, event.type, event.source) == (
        event_id,
        "nexus.anomaly.v1.AnomalyDetected",
        "nexus/test",
    )
    assert (event.subject, event.subject_hint) == (subject, "cpu")
    assert (event.data.point_id, event.delivery) == ("p1", 1)
    assert abs(datetime.now(UTC) - event.time) < timedelta(seconds=10)
    assert event.headers["ce-specversion"] == "1.0"
    assert event.headers["content-type"] == "application/protobuf"
    assert event.headers["Nats-Msg-Id"] == event_id
    assert consumer.processed == 1


async def test_a_durable_given_a_start_time_skips_what_was_stored_before(
    bus: EventBus, subject: str
) -> None:
    seen = Recorder()
    await bus.publish(subject, anomaly("before"))
    stored = await bus.js.get_last_msg(STREAM.name, subject)
    assert stored.time is not None
    await asyncio.sleep(0.01)
    await bus.publish(subject, anomaly("after"))
    name = durable()
    start = stored.time + timedelta(milliseconds=1)
    consumer = await consume(bus, subject, seen, name, start_time=start)

    async def settled() -> bool:  # everything it was to deliver is delivered and acknowledged
        info = await bus.js.consumer_info(STREAM.name, name)
        return bool(seen.events) and (info.num_pending, info.num_ack_pending) == (0, 0)

    await eventually(settled)
    await consumer.stop()

    assert [event.data.point_id for event in seen.events] == ["after"]


async def test_republished_event_is_stored_once(bus: EventBus, subject: str) -> None:
    seen = Recorder()
    first = await bus.publish(subject, anomaly("p1"), event_id="fixed-" + uuid.uuid4().hex)
    await bus.publish(subject, anomaly("p1"), event_id=first)
    second = await bus.publish(subject, anomaly("p2"))
    consumer = await consume(bus, subject, seen)
    await eventually(lambda: second in seen.ids)
    await consumer.stop()
    assert seen.ids == [first, second]
    assert consumer.duplicates == 0  # JetStream dropped the copy: it never reached us


async def test_failed_handler_gets_a_redelivery(bus: EventBus, subject: str) -> None:
    seen = Recorder(fail=lambda e: e.delivery == 1)
    await bus.publish(subject, anomaly("p1"))
    consumer = await consume(bus, subject, seen)
    await eventually(lambda: len(seen.events) == 1)
    await consumer.stop()
    assert seen.events[0].delivery == 2
    assert (consumer.failed, consumer.processed, consumer.terminated) == (1, 1, 0)


async def test_event_failing_max_deliver_times_is_terminated(bus: EventBus, subject: str) -> None:
    seen = Recorder(fail=lambda e: e.data.point_id == "bad")
    await bus.publish(subject, anomaly("bad"))
    await bus.publish(subject, anomaly("good"))
    consumer = await consume(bus, subject, seen, max_deliver=2)
    await eventually(lambda: consumer.terminated == 1 and len(seen.events) == 1)
    await asyncio.sleep(0.6)  # a third delivery would have come by now
    await consumer.stop()
    assert seen.calls == 3  # bad twice, good once
    assert [e.data.point_id for e in seen.events] == ["good"]


async def test_poison_message_is_terminated_without_the_handler(
    bus: EventBus, subject: str
) -> None:
    seen = Recorder()
    await bus.js.publish(subject, b"not an event")
    await bus.js.publish(subject, b"", headers={"ce-type": "nexus.other.v1.Thing", "ce-id": "x"})
    good = await bus.publish(subject, anomaly("p1"))
    consumer = await consume(bus, subject, seen)
    await eventually(lambda: seen.ids == [good] and consumer.terminated == 2)
    await consumer.stop()
    assert seen.calls == 1


async def test_replicas_with_one_durable_share_the_work(
    bus: EventBus, subject: str, nexus_settings: NexusSettings
) -> None:
    other_nc = await connect(nexus_settings, "replica-2")
    name, first, second = durable(), Recorder(), Recorder()
    consumers = [
        await consume(bus, subject, first, name, batch=2),
        await consume(EventBus(other_nc, "nexus/test"), subject, second, name, batch=2),
    ]
    ids = {await bus.publish(subject, anomaly(str(i))) for i in range(40)}
    await eventually(lambda: len(first.ids) + len(second.ids) == len(ids))
    await asyncio.sleep(0.1)
    for consumer in consumers:
        await consumer.stop()
    await other_nc.close()
    assert sorted(first.ids + second.ids) == sorted(ids)


async def test_every_watcher_gets_every_new_event(bus: EventBus, subject: str) -> None:
    await bus.publish(subject, anomaly("old"))
    first, second = Recorder(), Recorder()
    watchers = [
        await bus.watch(subject, AnomalyDetected, first),
        await bus.watch(subject, AnomalyDetected, second),
    ]
    new = [await bus.publish(subject, anomaly(str(i))) for i in range(3)]
    await eventually(lambda: first.ids == new and second.ids == new)
    for watcher in watchers:
        await watcher.stop()
    assert not watchers[0].running


async def test_watch_recovers_a_message_lost_on_the_way(
    bus: EventBus, subject: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropped: list[Msg] = []
    real_receive = Follower._receive

    async def lossy_receive(self: Follower, msg: Msg) -> None:
        if msg.reply and not dropped:  # lost on the way, as in a reconnect
            dropped.append(msg)
            return
        await real_receive(self, msg)

    monkeypatch.setattr(Follower, "_receive", lossy_receive)
    seen = Recorder()
    watcher = await bus.watch(subject, AnomalyDetected, seen)
    first = await bus.publish(subject, anomaly("1"))
    second = await bus.publish(subject, anomaly("2"))
    await eventually(lambda: seen.ids == [first, second])
    await watcher.stop()
    assert dropped


async def test_a_failing_watch_handler_does_not_stop_the_watch(bus: EventBus, subject: str) -> None:
    seen = Recorder(fail=lambda e: e.data.point_id == "bad")
    watcher = await bus.watch(subject, AnomalyDetected, seen)
    await bus.publish(subject, anomaly("bad"))
    good = await bus.publish(subject, anomaly("good"))
    await eventually(lambda: seen.ids == [good])
    await watcher.stop()
    assert (watcher.failed, watcher.processed) == (1, 1)


async def test_trace_context_crosses_nats(bus: EventBus, subject: str) -> None:
    parent = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    trace_ids: list[int] = []

    async def handler(event: Event[AnomalyDetected]) -> None:
        trace_ids.append(trace.get_current_span().get_span_context().trace_id)

    consumer = await consume(bus, subject, handler)  # type: ignore[arg-type]
    with trace.use_span(NonRecordingSpan(parent)):
        await bus.publish(subject, anomaly("p1"))
    await eventually(lambda: len(trace_ids) == 1)
    await consumer.stop()
    assert trace_ids == [parent.trace_id]


async def test_work_consumer_survives_a_server_restart(nats_server: NatsServer) -> None:
    nc = await connect(NexusSettings(nats_url=nats_server.url), "restart")
    bus = EventBus(nc, "nexus/test")
    await bus.ensure_streams(STREAM)
    seen = Recorder()
    # Messages in flight when the server went away come again after ack_wait: keep it short.
    consumer = await consume(bus, "nexus.eventstest.>", seen, batch=4, ack_wait_s=1.5)

    async def publish(count: int) -> list[str]:
        subject = "nexus.eventstest.x"
        return [await bus.publish(subject, anomaly(str(i)), timeout_s=1) for i in range(count)]

    ids = await publish(20)
    restarting = asyncio.create_task(asyncio.to_thread(nats_server.restart))
    while not restarting.done():
        ids += await publish(1)  # retries until the server is back
    ids += await publish(20)
    await eventually(lambda: len(seen.ids) >= len(ids), timeout_s=15)
    await asyncio.sleep(2)  # time for lost acks to cause redeliveries, which must be absorbed
    await consumer.stop()
    await nc.close()
    assert sorted(seen.ids) == sorted(ids)  # all of them, each exactly once


async def test_watch_resumes_after_a_server_restart(nats_server: NatsServer) -> None:
    nc = await connect(NexusSettings(nats_url=nats_server.url), "restart")
    bus = EventBus(nc, "nexus/test")
    await bus.ensure_streams(STREAM)
    for subject in ("nexus.eventstest.a", "nexus.eventstest.b"):
        await bus.publish(subject, anomaly("old"))
    quiet, busy = Recorder(), Recorder()  # quiet sees nothing before the restart, busy one event
    watchers = [
        await bus.watch("nexus.eventstest.a", AnomalyDetected, quiet),
        await bus.watch("nexus.eventstest.b", AnomalyDetected, busy),
    ]
    before = await bus.publish("nexus.eventstest.b", anomaly("before"))
    await eventually(lambda: busy.ids == [before])
    await asyncio.to_thread(nats_server.restart)
    after_a = await bus.publish("nexus.eventstest.a", anomaly("after"))
    after_b = await bus.publish("nexus.eventstest.b", anomaly("after"))
    # Resumed where each left off: nothing replayed, nothing missed.
    await eventually(lambda: quiet.ids == [after_a] and busy.ids == [before, after_b], 15)
    for watcher in watchers:
        await watcher.stop()
    await nc.close()


async def test_a_deleted_durable_is_created_again(bus: EventBus, subject: str) -> None:
    seen = Recorder()
    consumer = await consume(bus, subject, seen)
    await bus.js.delete_consumer(STREAM.name, consumer.name)
    event_id = await bus.publish(subject, anomaly("p1"))
    await eventually(lambda: seen.ids == [event_id], timeout_s=10)
    await consumer.stop()


async def test_publish_gives_up_with_unavailable(bus: EventBus) -> None:
    with pytest.raises(Unavailable, match="could not publish"):
        await bus.publish(f"nowhere.{uuid.uuid4().hex}", anomaly("p"), timeout_s=0.2, retries=1)


async def test_publish_many_stores_each_event_once_and_says_which_failed(
    bus: EventBus, subject: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nexus.common.events._publish.publish_backoff_s", lambda attempt: 0.01)
    events = [(anomaly(f"p{i}"), f"id-{uuid.uuid4().hex}") for i in range(50)]
    assert await bus.publish_many(subject, events) == [None] * 50
    assert await bus.publish_many(subject, events[:10]) == [None] * 10  # again: stored once
    info = await bus.js.stream_info(STREAM.name, subjects_filter=subject)
    assert info.state.subjects == {subject: 50}
    seen = Recorder()
    consumer = await consume(bus, subject, seen)
    await eventually(lambda: len(seen.ids) == 50, timeout_s=10)
    await consumer.stop()
    assert seen.ids == [event_id for _, event_id in events]  # in order
    nowhere = f"nowhere.{uuid.uuid4().hex}"  # no stream takes it: every one fails, none raises
    outcomes = await bus.publish_many(nowhere, events[:3], timeout_s=0.2, retries=1)
    assert [type(outcome) for outcome in outcomes] == [Unavailable] * 3


async def test_publish_many_writes_a_batch_without_a_turn_of_the_loop_each(
    bus: EventBus, subject: str
) -> None:
    """With room for them all, the writes take no turn of the event loop each: the batch is
    written before anything else runs (and the flusher writes it to the socket at once)."""
    events = [(anomaly(f"p{i}"), f"id-{uuid.uuid4().hex}") for i in range(500)]
    assert await bus.publish_many(subject, events[:1]) == [None]  # the reply inbox exists now
    before = bus.nc.stats["out_msgs"]
    publishing = asyncio.create_task(bus.publish_many(subject, events))
    await asyncio.sleep(0)  # the task runs until it first waits
    written = bus.nc.stats["out_msgs"] - before
    assert await publishing == [None] * 500
    assert written == 500


async def test_publish_many_across_a_crash_writes_what_was_not_acknowledged_again_together(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await connect(NexusSettings(nats_url=nats_server.url), "crash")
    bus = EventBus(nc, "nexus/test")
    await bus.ensure_streams(STREAM)
    subject = f"nexus.eventstest.{uuid.uuid4().hex[:8]}"
    events = [(anomaly(f"p{i}"), f"id-{uuid.uuid4().hex}") for i in range(200)]
    nats_server.kill()  # the writes go nowhere, or wait in the client until it reconnects

    async def restart() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(nats_server.start)

    restarting = asyncio.create_task(restart())
    with caplog.at_level(logging.INFO, logger="nexus.common.events._bus"):
        outcomes = await bus.publish_many(subject, events, timeout_s=0.5, retries=30)
    await restarting
    info = await bus.js.stream_info(STREAM.name, subjects_filter=subject)
    await nc.close()
    assert outcomes == [None] * 200
    assert info.state.subjects == {subject: 200}  # written more than once, stored once
    rounds = [r.getMessage() for r in caplog.records if "writing them again" in r.getMessage()]
    assert 1 <= len(rounds) < 30  # the unacknowledged go again together: a round each time


async def test_publish_many_of_more_than_the_client_holds_unacknowledged_ends_with_no_server(
    nats_server: NatsServer,
) -> None:
    nc = await connect(NexusSettings(nats_url=nats_server.url), "stalled")
    bus = EventBus(nc, "nexus/test")
    await bus.ensure_streams(STREAM)
    events = [(anomaly(f"p{i}"), f"id-{uuid.uuid4().hex}") for i in range(4_100)]
    nats_server.kill()  # nats-py holds 4,000 writes unacknowledged, then waits for room
    outcomes = await bus.publish_many("nexus.eventstest.x", events, timeout_s=0.3, retries=1)
    await close(nc)
    nats_server.start()
    assert [type(outcome) for outcome in outcomes] == [Unavailable] * 4_100


async def test_consume_on_missing_stream_is_a_failed_precondition(bus: EventBus) -> None:
    with pytest.raises(FailedPrecondition, match="does not exist"):
        await bus.consume(
            "nexus.x.y", AnomalyDetected, Recorder(), durable=durable(), stream="NO_SUCH"
        )


async def test_ensure_streams_is_idempotent_and_updates_the_config(bus: EventBus) -> None:
    wider = Stream(STREAM.name, STREAM.subjects, max_age_s=2 * DAY_S, max_bytes=STREAM.max_bytes)
    await bus.ensure_streams(wider, wider)
    info = await bus.js.stream_info(STREAM.name)
    assert (info.config.subjects, info.config.max_age) == (list(STREAM.subjects), 2 * DAY_S)
    assert info.config.duplicate_window == 120
    await bus.ensure_streams(STREAM)


async def test_stream_of_asks_the_server(bus: EventBus) -> None:
    assert await bus.stream_of("nexus.eventstest.x.y") == STREAM.name
    assert await bus.stream_of("nexus.eventstest.>") == STREAM.name
    with pytest.raises(FailedPrecondition):
        await bus.stream_of("nexus.nothing.here")


class _FakeMsg(Msg):
    def __init__(self, headers: dict[str, str], data: bytes) -> None:
        self.headers, self.data, self.reply, self.subject = headers, data, "", "s"


def test_a_metric_point_under_its_former_anomaly_type_is_accepted() -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s"}
    former = {**headers, "ce-type": "nexus.anomaly.v1.MetricPoint"}
    data = MetricPoint(source="cpu", values=[1.0]).SerializeToString()
    event = parse_event(_FakeMsg(former, data), MetricPoint)
    assert (event.type, event.data.source, list(event.data.values)) == (
        "nexus.metrics.v1.MetricPoint",
        "cpu",
        [1.0],
    )
    with pytest.raises(InvalidArgument, match="ce-type"):
        parse_event(_FakeMsg(former, data), AnomalyDetected)


def test_parse_event_sets_every_field_of_a_frozen_event() -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "e1",
        "ce-source": "nexus/test",
        "ce-type": "nexus.metrics.v1.MetricPoint",
        "ce-time": "2026-12-04T01:19:41.386Z",
        "ce-subject": "cpu",
    }
    msg = _FakeMsg(headers, MetricPoint(source="cpu", values=[2.0]).SerializeToString())
    msg.reply = "$JS.ACK.METRICS.c.3.41.7.1764811181386000000.0"
    event = parse_event(msg, MetricPoint)
    expected = Event(
        id="e1",
        type="nexus.metrics.v1.MetricPoint",
        source="nexus/test",
        subject="s",
        time=datetime(2026, 12, 4, 1, 19, 41, 386000, tzinfo=UTC),
        data=MetricPoint(source="cpu", values=[2.0]),
        headers=headers,
        delivery=3,
        subject_hint="cpu",
        sequence=41,
    )
    assert event == expected
    assert vars(event).keys() == vars(expected).keys()
    with pytest.raises(AttributeError):
        event.id = "e2"  # type: ignore[misc]


def test_parse_event_checks_the_type_and_headers() -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s"}
    data = MetricPoint(source="cpu").SerializeToString()
    typed = {**headers, "ce-type": "nexus.metrics.v1.MetricPoint"}
    assert parse_event(_FakeMsg(typed, data), MetricPoint).data.source == "cpu"
    with pytest.raises(InvalidArgument, match=r"expected nexus\.anomaly\.v1\.AnomalyDetected"):
        parse_event(_FakeMsg(typed, data), AnomalyDetected)
    with pytest.raises(InvalidArgument, match="ce-type"):
        parse_event(_FakeMsg(headers, data), MetricPoint)
    with pytest.raises(InvalidArgument, match="ce-id"):
        parse_event(_FakeMsg({**typed, "ce-id": ""}, data), MetricPoint)
    with pytest.raises(InvalidArgument, match="data"):
        parse_event(_FakeMsg(typed, b"\xff\xff"), MetricPoint)


async def test_concurrent_handlers_overlap_and_each_event_is_acked(
    bus: EventBus, subject: str
) -> None:
    in_flight, most, started = 0, 0, []

    async def slow(event: Event[AnomalyDetected]) -> None:
        nonlocal in_flight, most
        started.append(event.data.point_id)
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1

    for i in range(20):
        await bus.publish(subject, anomaly(f"p{i}"))
    name = durable()
    consumer = await bus.consume(
        subject, AnomalyDetected, slow, durable=name, stream=STREAM.name, batch=20, concurrency=10
    )
    await eventually(lambda: consumer.processed == 20)
    for _ in range(100):  # acks travel after the handlers return
        info = await bus.js.consumer_info(STREAM.name, name)
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.02)
    await consumer.stop()
    assert most > 1
    assert started == [f"p{i}" for i in range(20)]  # handlers start in delivery order
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_bursts_from_concurrent_sources_are_each_handled_once(bus: EventBus) -> None:
    """Rounds of thousands of events from concurrent publishers, with idle pauses between them.

    Over the pauses the server sends idle heartbeats and pull requests expire; in the bursts
    messages of one request can still arrive while the next is asked for. nats-py's fetch lost
    whole batches of such messages (they came back only after the 30 s ack wait, or never);
    here every event must be handled within seconds, once, with nothing left unacknowledged.
    """
    sources, per_source, rounds = 12, 100, 3
    base = f"nexus.eventstest.burst{uuid.uuid4().hex[:8]}"
    counts: Counter[str] = Counter()

    async def handler(event: Event[AnomalyDetected]) -> None:
        counts[event.data.point_id] += 1
        await asyncio.sleep(0.001)  # a handler that awaits, as one behind a micro-batcher does

    name = durable()
    consumer = await bus.consume(
        f"{base}.>", AnomalyDetected, handler, durable=name, stream=STREAM.name,
        batch=256, concurrency=256,
    )  # fmt: skip

    async def source(index: int, round_: int) -> None:
        for i in range(per_source):
            await bus.publish(f"{base}.s{index}", anomaly(f"{round_}-{index}-{i}"))

    for round_ in range(rounds):
        await asyncio.gather(*(source(index, round_) for index in range(sources)))
        expected = sources * per_source * (round_ + 1)
        await eventually(lambda n=expected: len(counts) == n, timeout_s=15)  # type: ignore[misc]
        await asyncio.sleep(3 * HEARTBEAT_S)  # idle: heartbeats, expiring pull requests
    await consumer.stop()
    info = await bus.js.consumer_info(STREAM.name, name)
    assert len(counts) == sources * per_source * rounds
    assert set(counts.values()) == {1}
    assert (consumer.processed, consumer.failed, consumer.duplicates) == (len(counts), 0, 0)
    assert (info.num_ack_pending, info.num_redelivered, info.num_pending) == (0, 0, 0)


# Dead letters: what a durable consumer gives up on is stored with why, and can be replayed.


async def dead_letters_of(letters: DeadLetters, consumer: Consumer, count: int) -> list[DeadLetter]:
    """The consumer's dead letters, once there are `count`."""
    found: list[DeadLetter] = []
    for _ in range(250):
        found = await letters.list(consumer=consumer.name)
        if len(found) >= count:
            break
        await asyncio.sleep(0.02)
    assert len(found) == count
    return found


async def test_an_event_failing_max_deliver_times_is_dead_lettered_then_replayed_once(
    bus: EventBus, subject: str
) -> None:
    broken = True
    handler = Recorder(fail=lambda _: broken)
    event_id = await bus.publish(subject, anomaly("p1"), subject_hint="cpu")
    consumer = await consume(bus, subject, handler, max_deliver=3)
    letters = DeadLetters(bus.js)
    [letter] = await dead_letters_of(letters, consumer, 1)
    await asyncio.sleep(0.6)  # a fourth delivery would have come by now
    assert handler.calls == 3
    assert consumer.terminated == 1
    assert (letter.subject, letter.stream, letter.consumer) == (subject, STREAM.name, consumer.name)
    assert (letter.deliveries, letter.reason) == (3, "failed")
    assert letter.error == "RuntimeError: handler failed on purpose"
    assert (letter.event_id, letter.event_type) == (event_id, "nexus.anomaly.v1.AnomalyDetected")
    assert letter.headers["ce-subject"] == "cpu"
    assert AnomalyDetected.FromString(letter.data).point_id == "p1"
    assert letter.stream_seq > 0
    assert letter.time is not None
    assert (await letters.get(letter.seq)).event_id == event_id

    broken = False  # the handler is fixed: replay
    ack = await letters.replay(letter.seq)
    assert ack.stream == STREAM.name
    await eventually(lambda: len(handler.events) == 1)
    await asyncio.sleep(0.3)
    await consumer.stop()
    [replayed] = handler.events
    assert (replayed.id, replayed.delivery) == (event_id, 1)
    assert replayed.headers[REPLAYED_FROM_HEADER] == f"{DEAD_LETTERS.name}:{letter.seq}"
    assert consumer.processed == 1  # processed once
    assert await letters.list(consumer=consumer.name) == []
    with pytest.raises(NotFound):
        await letters.get(letter.seq)
    with pytest.raises(NotFound):
        await letters.replay(letter.seq)


async def test_a_poison_message_is_dead_lettered_and_does_not_block(
    bus: EventBus, subject: str
) -> None:
    handler = Recorder()
    await bus.js.publish(subject, b"not an event", headers={"x-origin": "test"})
    good = await bus.publish(subject, anomaly("p1"))
    consumer = await consume(bus, subject, handler)
    [letter] = await dead_letters_of(DeadLetters(bus.js), consumer, 1)
    await eventually(lambda: handler.ids == [good])
    await consumer.stop()
    assert (letter.reason, letter.deliveries, letter.data) == ("poison", 1, b"not an event")
    assert "ce-type" in letter.error
    assert letter.headers == {"x-origin": "test"}
    assert handler.calls == 1


async def test_an_event_the_handler_rejects_is_dead_lettered_at_once(
    bus: EventBus, subject: str
) -> None:
    calls = 0

    async def reject(event: Event[AnomalyDetected]) -> None:
        nonlocal calls
        calls += 1
        raise InvalidArgument.for_field("values", "must be finite")

    await bus.publish(subject, anomaly("p1"))
    consumer = await consume(bus, subject, reject)  # type: ignore[arg-type]
    [letter] = await dead_letters_of(DeadLetters(bus.js), consumer, 1)
    await consumer.stop()
    assert (calls, letter.reason, letter.deliveries) == (1, "rejected", 1)
    assert "must be finite" in letter.error


async def test_no_dead_letter_is_lost_while_its_stream_is_missing(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("nexus.common.events._work.DEAD_LETTER_RETRY_S", 0.2)
    nc = await connect(NexusSettings(nats_url=nats_server.url), "dead-letters")
    bus = EventBus(nc, "nexus/test")
    await bus.ensure_streams(STREAM)
    handler = Recorder(fail=lambda _: True)
    consumer = await consume(bus, "nexus.eventstest.x", handler, max_deliver=2)
    await bus.js.delete_stream(DEAD_LETTERS.name)  # as if it were lost or not yet created
    event_id = await bus.publish("nexus.eventstest.x", anomaly("p1"))
    await eventually(lambda: handler.calls == 2)
    await asyncio.sleep(0.5)  # its dead letter cannot be stored: it must stay, and come again
    assert consumer.terminated == 0
    await bus.ensure_streams(DEAD_LETTERS)
    [letter] = await dead_letters_of(DeadLetters(bus.js), consumer, 1)
    await consumer.stop()
    await nc.close()
    assert handler.calls == 2  # the handler is not called past max_deliver
    assert (letter.event_id, letter.reason) == (event_id, "failed")
    assert letter.error == "RuntimeError: handler failed on purpose"  # the last failure, kept
    assert letter.deliveries > 2


async def test_listing_filters_and_pages(bus: EventBus, subject: str) -> None:
    handler = Recorder(fail=lambda _: True)
    ids = [await bus.publish(subject, anomaly(str(i))) for i in range(3)]
    consumer = await consume(bus, subject, handler, max_deliver=1)
    letters = DeadLetters(bus.js)
    found = await dead_letters_of(letters, consumer, 3)
    await consumer.stop()
    assert sorted(letter.event_id for letter in found) == sorted(ids)
    first = await letters.list(consumer=consumer.name, limit=2)
    rest = await letters.list(consumer=consumer.name, after=first[-1].seq)
    assert [letter.seq for letter in first + rest] == [letter.seq for letter in found]
    assert {letter.seq for letter in found} <= {letter.seq for letter in await letters.list()}
    with pytest.raises(InvalidArgument):
        await letters.list(consumer="a.b")
    with pytest.raises(InvalidArgument):
        await letters.list(limit=0)


# Batch consumers: a fetched batch reaches the handler at once; each event is settled on its own.


class BatchRecorder:
    """A batch handler that records its batches and answers each event by its point id:
    "bad" is rejected, "flaky" fails on its first delivery, "boom" makes the whole call raise
    on its first delivery."""

    def __init__(self) -> None:
        self.batches: list[list[Event[AnomalyDetected]]] = []

    async def __call__(self, events: Sequence[Event[AnomalyDetected]]) -> list[Exception | None]:
        self.batches.append(list(events))
        if any(e.data.point_id == "boom" and e.delivery == 1 for e in events):
            raise RuntimeError("the whole batch failed")
        return [self._outcome(event) for event in events]

    @staticmethod
    def _outcome(event: Event[AnomalyDetected]) -> Exception | None:
        if event.data.point_id == "bad":
            return InvalidArgument.for_field("values", "must be finite")
        if event.data.point_id == "flaky" and event.delivery == 1:
            return RuntimeError("try again")
        return None

    def handled(self, point_id: str) -> list[Event[AnomalyDetected]]:
        return [e for batch in self.batches for e in batch if e.data.point_id == point_id]


async def consume_batches(
    bus: EventBus, subject: str, handler: BatchRecorder, **kwargs: Any
) -> Consumer:
    return await bus.consume_batches(
        subject, AnomalyDetected, handler, durable=durable(), stream=STREAM.name, **kwargs
    )


async def test_a_batch_handler_gets_the_fetched_events_at_once_in_order(
    bus: EventBus, subject: str
) -> None:
    ids = [await bus.publish(subject, anomaly(f"p{i}")) for i in range(30)]
    handler = BatchRecorder()
    consumer = await consume_batches(bus, subject, handler, batch=64)
    await eventually(lambda: consumer.processed == 30)
    info = await bus.js.consumer_info(STREAM.name, consumer.name)
    await consumer.stop()
    assert [e.id for batch in handler.batches for e in batch] == ids
    assert len(handler.batches) < 30  # several events per call
    sequences = [e.sequence for batch in handler.batches for e in batch]
    assert sequences == sorted(sequences)
    assert sequences[0] > 0
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_each_event_of_a_batch_is_settled_by_its_own_outcome(
    bus: EventBus, subject: str
) -> None:
    await bus.js.publish(subject, b"not an event")  # poison: never reaches the handler
    for point_id in ("good", "bad", "flaky", "good2"):
        await bus.publish(subject, anomaly(point_id))
    handler = BatchRecorder()
    consumer = await consume_batches(bus, subject, handler, batch=64)
    letters = await dead_letters_of(DeadLetters(bus.js), consumer, 2)
    await eventually(lambda: len(handler.handled("flaky")) == 2)
    await eventually(lambda: consumer.processed == 3)
    await consumer.stop()
    assert sorted(letter.reason for letter in letters) == ["poison", "rejected"]
    assert [len(handler.handled(p)) for p in ("good", "bad", "good2")] == [1, 1, 1]
    assert [e.delivery for e in handler.handled("flaky")] == [1, 2]  # only it came again
    assert (consumer.failed, consumer.terminated) == (2, 2)


async def test_a_batch_whose_handler_raises_comes_again_whole(bus: EventBus, subject: str) -> None:
    for point_id in ("a", "boom", "b"):
        await bus.publish(subject, anomaly(point_id))
    handler = BatchRecorder()
    consumer = await consume_batches(bus, subject, handler, batch=64)
    await eventually(lambda: consumer.processed == 3)
    await consumer.stop()
    # the server may hand the three over in more than one batch: boom's first batch is the one
    # that must come again whole, every other event is handled once
    failed = next(b for b in handler.batches if any(e.data.point_id == "boom" for e in b))
    again = {e.data.point_id for e in failed}
    for point_id in ("a", "boom", "b"):
        expected = [1, 2] if point_id in again else [1]
        assert [e.delivery for e in handler.handled(point_id)] == expected, point_id
    assert consumer.failed == len(failed)


async def test_batches_handled_two_at_a_time_are_each_acknowledged_once(
    bus: EventBus, subject: str
) -> None:
    ids = [await bus.publish(subject, anomaly(f"p{i}")) for i in range(40)]
    started: list[list[str]] = []
    in_hand = most = 0

    async def slow(events: Sequence[Event[AnomalyDetected]]) -> list[Exception | None]:
        nonlocal in_hand, most
        started.append([e.id for e in events])
        in_hand += 1
        most = max(most, in_hand)
        await asyncio.sleep(0.2)
        in_hand -= 1
        return [None] * len(events)

    consumer = await bus.consume_batches(
        subject, AnomalyDetected, slow, durable=durable(), stream=STREAM.name, batch=8, depth=2
    )
    await eventually(lambda: consumer.processed == 40)

    async def all_acknowledged() -> bool:  # the server applies acknowledgements on its own time
        info = await bus.js.consumer_info(STREAM.name, consumer.name)
        return (info.num_ack_pending, info.num_pending) == (0, 0)

    await eventually(all_acknowledged)
    await consumer.stop()
    assert most == 2  # the next batch started while one was in hand
    assert [i for batch in started for i in batch] == ids  # started in delivery order, once
    assert consumer.duplicates == 0


async def test_acknowledging_in_one_write_refuses_a_subject_that_would_inject_commands(
    nats_client: Client,
) -> None:
    assert isinstance(nats_client, NexusClient)
    sent = nats_client.stats["out_msgs"]
    for subjects in (["a.b", "x\r\nPUB evil 0"], ["a.b", ""], ["with space"]):
        with pytest.raises(BadSubjectError):
            await nats_client.publish_empty(subjects)
    assert nats_client.stats["out_msgs"] == sent
