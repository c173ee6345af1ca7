"""Dead letters: what a durable consumer gives up on is stored with why, and can be replayed."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.client import Client

from nexus.api.anomaly.v1.events_pb2 import AnomalyDetected
from nexus.common.errors import InvalidArgument, NotFound
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
    Stream,
)
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.common.testing.events import Recorder as EventRecorder
from nexus.common.testing.events import eventually

pytestmark = pytest.mark.integration

STREAM = Stream("EVENTS_TEST", ("nexus.eventstest.>",), max_age_s=DAY_S, max_bytes=64 * MIB)
"""The stream of the events tests (test_events.py declares it the same way)."""
Recorder = EventRecorder[AnomalyDetected]


def anomaly(point_id: str) -> AnomalyDetected:
    return AnomalyDetected(source="cpu", point_id=point_id, score=0.9, threshold=0.5)


@pytest.fixture
async def bus(nats_client: Client) -> EventBus:
    bus = EventBus(nats_client, "nexus/test")
    await bus.ensure_streams(STREAM)
    return bus


@pytest.fixture
def subject() -> str:
    return f"nexus.eventstest.dl{uuid.uuid4().hex}"


async def consume(bus: EventBus, subject: str, handler: Recorder, **kwargs: object) -> Consumer:
    name = f"dl_{uuid.uuid4().hex}"
    return await bus.consume(
        subject,
        AnomalyDetected,
        handler,
        durable=name,
        stream=STREAM.name,
        **kwargs,  # type: ignore[arg-type]
    )


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
