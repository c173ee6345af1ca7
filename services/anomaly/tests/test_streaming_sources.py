"""Per-source streaming detectors over real NATS: chosen through the API and applied on every
replica, validated field by field, and their state saved in KV so that it survives replicas,
redeliveries, reconfiguration and a NATS restart."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from anomaly_testing import (
    Client,
    ScoringSpy,
    StartHost,
    all_acked,
    replay,
    scores,
    spiky,
    streamed,
    unique,
)
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from nexus.anomaly.converters import streaming_of
from nexus.anomaly.detectors.online import MAX_STATE_BYTES, WindowedGaussian, decode_state
from nexus.anomaly.settings import AnomalySettings
from nexus.anomaly.streamconfig import default_config
from nexus.anomaly.streamstate import (
    BUCKET,
    HEADROOM,
    TOO_LARGE,
    SourceStream,
    StateLimits,
    StreamStates,
)
from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.common.errors import ResourceExhausted
from nexus.common.events import EventBus
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.status import field_of
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.integration

KIND = WindowedGaussian.KIND
SMALL = pb.StreamingConfig(
    kind=KIND, parameters={"window": "40", "step": "5"}, threshold=0.999, suppress=0
)
"""A detector that learns fast: a spike of 30 deviations stands out after a few points."""


async def bind(client: Client, source: str, config: pb.StreamingConfig) -> pb.SourceBinding:
    request = pb.BindSourceRequest(source=source, streaming=config)
    return (await client.anomaly.BindSource(request, metadata=client.metadata)).binding


async def bind_on(host: ServiceHost, key: str, source: str, config: pb.StreamingConfig) -> None:
    """Binds through one replica (tests that count what their own replicas learn leave the
    `anomaly` fixture, with the default durable, out)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        await bind(Client(channel, key), source, config)


async def publish(bus: EventBus, source: str, rows: Sequence[Sequence[float]], first: int) -> None:
    for index, row in enumerate(rows, start=first):
        point = MetricPoint(source=source, id=str(index), values=row)
        await bus.publish(f"nexus.metrics.{source}", point, event_id=f"{source}-{index}")


async def saved_values(js: JetStreamContext, durable: str, source: str) -> list[float]:
    """The values that the saved state of `source`'s first value's windowed Gaussian holds."""
    entry = await (await js.key_value(BUCKET)).get(f"{durable}.{source}")
    state = decode_state(entry.value or b"")
    return [*state["detector.0.window"].tolist(), *state["detector.0.pending"].tolist()]


async def saved_window(js: JetStreamContext, durable: str, source: str) -> int:
    """How many values the saved state of `source`'s first value's windowed Gaussian holds."""
    return len(await saved_values(js, durable, source))


async def test_a_source_chooses_its_streaming_detector_on_every_replica(
    client: Client, start_anomaly: StartHost, admin_key: str, nats_client: Nats
) -> None:
    source = unique("src")
    binding = await bind(client, source, SMALL)
    assert (binding.detector, binding.alias) == ("", "")
    assert binding.streaming == SMALL
    other = await start_anomaly()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
        second = Client(channel, admin_key)
        request = pb.ListSourcesRequest(page_size=500)
        listed = await second.anomaly.ListSources(request, metadata=second.metadata)
        assert any(b.source == source and b.streaming == SMALL for b in listed.bindings)
    # One replica scores the points: two would interleave them (see the next tests).
    await other.stop()
    rows = spiky(100)
    await publish(EventBus(nats_client, "test"), source, rows, 0)
    expected = replay(SMALL, rows)
    js = nats_client.jetstream()
    await eventually(lambda: _found(js, source, set(expected)), timeout_s=30)
    assert await scores(js, source) == pytest.approx(expected)
    assert {24, 49, 74, 99} <= set(expected)


async def _found(js: JetStreamContext, source: str, points: set[int]) -> bool:
    return {index for index, _ in await streamed(js, source)} >= points


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.BindSourceRequest(source="s"), "detector"),
        (pb.BindSourceRequest(source="s", alias="a", streaming=SMALL), "alias"),
        (
            pb.BindSourceRequest(source="s", streaming=pb.StreamingConfig(kind="nope")),
            "streaming.kind",
        ),
        (
            pb.BindSourceRequest(
                source="s", streaming=pb.StreamingConfig(parameters={"window": "1"})
            ),
            "streaming.parameters.window",
        ),
        (
            pb.BindSourceRequest(
                source="s", streaming=pb.StreamingConfig(parameters={"colour": "red"})
            ),
            "streaming.parameters.colour",
        ),
        (
            pb.BindSourceRequest(source="s", streaming=pb.StreamingConfig(threshold=0)),
            "streaming.threshold",
        ),
        (
            pb.BindSourceRequest(source="s", streaming=pb.StreamingConfig(threshold=1.01)),
            "streaming.threshold",
        ),
        (
            pb.BindSourceRequest(source="s", streaming=pb.StreamingConfig(suppress=-1)),
            "streaming.suppress",
        ),
    ],
)
async def test_a_bad_binding_is_an_invalid_argument_naming_the_field(
    client: Client, request_: pb.BindSourceRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.anomaly.BindSource(request_, metadata=client.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(caught.value) == field
    listed = await client.anomaly.ListSources(pb.ListSourcesRequest(), metadata=client.metadata)
    assert "s" not in {b.source for b in listed.bindings}


async def test_replicas_interleaving_one_source_learn_each_point_once(
    start_anomaly: StartHost, admin_key: str, nats_client: Nats
) -> None:
    """Small batches of one source spread over two replicas: each saves the state with
    compare-and-set, reloads it and applies its batch again when the other saved first, so no
    point is lost or learnt twice: the saved window holds every value once."""
    durable, source = unique("stream"), unique("src")
    replicas = [await start_anomaly(stream_durable=durable, stream_batch=4) for _ in range(2)]
    config = pb.StreamingConfig(kind=KIND, parameters={"window": "1000", "step": "1000"})
    await bind_on(replicas[0], admin_key, source, config)
    rows = spiky(300)
    await publish(EventBus(nats_client, "test"), source, rows, 0)
    js = nats_client.jetstream()
    await all_acked(js, durable)
    assert sorted(await saved_values(js, durable, source)) == sorted(row[0] for row in rows)


async def test_a_redelivered_point_is_answered_again_but_not_learnt_again(
    start_anomaly: StartHost, admin_key: str, nats_client: Nats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica learns and saves a batch but stops before acknowledging it; the next replica
    gets the points again, finds them learnt in the saved state, and answers each with its
    recorded verdict: every spike published once (the same event id), every point learnt once,
    the verdicts those of one uninterrupted detector."""
    spy = ScoringSpy(monkeypatch)
    durable, source = unique("stream"), unique("src")
    rows = spiky(150)
    bus, js = EventBus(nats_client, "test"), nats_client.jetstream()

    async def never(msg: Msg) -> None:
        return None

    monkeypatch.setattr(Msg, "ack", never)  # the first replica's acks are lost
    lost = await start_anomaly(stream_durable=durable, stream_ack_wait_s=1.0)
    await bind_on(lost, admin_key, source, SMALL)
    await publish(bus, source, rows[:100], 0)
    await eventually(lambda: spy.of(source).total() == 100, timeout_s=20)
    await asyncio.sleep(0.3)  # its anomalies published, its state saved
    await lost.stop()
    monkeypatch.undo()
    spy = ScoringSpy(monkeypatch)
    await start_anomaly(stream_durable=durable, stream_ack_wait_s=1.0)
    await publish(bus, source, rows[100:], 100)
    await all_acked(js, durable)
    assert spy.of(source) == Counter((source, tuple(row)) for row in rows[100:])  # not 0-99
    assert await saved_window(js, durable, source) == 40
    assert await scores(js, source) == pytest.approx(replay(SMALL, rows))


async def test_a_new_model_starts_afresh_and_a_new_threshold_keeps_what_was_learnt(
    start_anomaly: StartHost, admin_key: str, nats_client: Nats
) -> None:
    durable, source = unique("stream"), unique("src")
    host = await start_anomaly(stream_durable=durable)
    bus, js = EventBus(nats_client, "test"), nats_client.jetstream()
    wide = pb.StreamingConfig(kind=KIND, parameters={"window": "1000", "step": "1000"})
    await bind_on(host, admin_key, source, wide)
    await publish(bus, source, spiky(30), 0)
    await all_acked(js, durable)
    stricter = pb.StreamingConfig()
    stricter.CopyFrom(wide)
    stricter.threshold, stricter.suppress = 0.9999, 3
    await bind_on(host, admin_key, source, stricter)
    await publish(bus, source, spiky(10, seed=6), 30)
    await all_acked(js, durable)
    assert await saved_window(js, durable, source) == 40
    wider = pb.StreamingConfig(kind=KIND, parameters={"window": "999", "step": "1000"})
    await bind_on(host, admin_key, source, wider)
    await publish(bus, source, spiky(10, seed=7), 40)
    await all_acked(js, durable)
    assert await saved_window(js, durable, source) == 10


async def test_state_survives_a_nats_restart(
    nats_server: NatsServer, start_anomaly: StartHost
) -> None:
    common = NexusSettings(nats_url=nats_server.url, registry_signing_key="k", auth_enabled=False)
    host: ServiceHost = await start_anomaly(common)
    durable = host.settings.stream_durable  # type: ignore[attr-defined]
    source = unique("src")
    await bind_on(host, "", source, SMALL)
    nc = await connect(common, "publisher")
    bus, js = EventBus(nc, "test"), nc.jetstream()
    rows = spiky(160)
    await publish(bus, source, rows[:80], 0)
    await all_acked(js, durable)
    await asyncio.to_thread(nats_server.restart)
    await publish(bus, source, rows[80:], 80)
    await all_acked(js, durable)
    found = await scores(js, source)
    await nc.drain()
    assert found == pytest.approx(replay(SMALL, rows))


async def test_a_wide_source_is_saved_every_batch_and_a_new_replica_resumes_it(
    start_anomaly: StartHost, admin_key: str, nats_client: Nats
) -> None:
    """64 values a point, a context detector each: the whole state once outgrew a KV value
    after a few hundred points and was then kept in memory only (its revision stopped, and a
    replica started in its place resumed an old state). Now every part of the stream is saved,
    and the state after a restart is that of one uninterrupted detector."""
    durable, source = unique("stream"), unique("src")
    config = pb.StreamingConfig(kind="context", parameters={"learning": "50"}, suppress=0)
    host = await start_anomaly(stream_durable=durable, stream_batch=64)
    await bind_on(host, admin_key, source, config)
    rows = np.random.default_rng(9).normal(size=(700, 64)).tolist()
    bus, js = EventBus(nats_client, "test"), nats_client.jetstream()
    kv, key = await js.key_value(BUCKET), f"{durable}.{source}"
    revisions = []
    for start in range(0, 400, 100):
        await publish(bus, source, rows[start : start + 100], start)
        await all_acked(js, durable)
        revisions.append((await kv.get(key)).revision)
    assert revisions == sorted(set(revisions))  # each part saved
    await host.stop()
    await start_anomaly(stream_durable=durable, stream_batch=64)
    await publish(bus, source, rows[400:], 400)
    await all_acked(js, durable)
    entry = await kv.get(key)
    assert (entry.revision or 0) > revisions[-1]
    limits = StateLimits(
        min(MAX_STATE_BYTES, nats_client.max_payload - HEADROOM),
        AnomalySettings().stream_recent_points,
    )
    streaming = streaming_of(pb.BindSourceRequest(source=source, streaming=config))
    assert streaming is not None
    uninterrupted = SourceStream(source, streaming, limits=limits)
    uninterrupted.learn(list(enumerate(rows)))
    saved = decode_state(entry.value or b"")
    expected = uninterrupted.detector.get_state()
    assert {k for k in saved if k.startswith("detector.")} == {f"detector.{k}" for k in expected}
    assert all(np.array_equal(saved[f"detector.{k}"], v) for k, v in expected.items())
    assert len(entry.value or b"") <= limits.bytes


async def test_a_state_over_what_kv_holds_is_given_back_and_counted(nats_client: Nats) -> None:
    """States are built to fit; should one not (the server's payload limit fell), its points
    are given back (an error, not acknowledged) and counted, never silently kept in memory."""
    with ThreadPoolExecutor(1) as executor:
        states = StreamStates(
            nats_client, executor, consumer=unique("c"), max_sources=4, max_recent=10, ttl_s=0
        )
        await states.start()
        stream = SourceStream("s", default_config(), limits=states.limits)
        before = TOO_LARGE._value.get()
        outcome = await states._save("s", stream, b"x" * (states.limits.bytes + 1))
    assert isinstance(outcome, ResourceExhausted)
    assert TOO_LARGE._value.get() == before + 1
    assert states.held("s") is None


def test_a_state_remembers_enough_points_for_the_batches_in_hand() -> None:
    assert AnomalySettings(stream_batch=2500, stream_recent_points=10_000).stream_batch == 2500
    with pytest.raises(ValidationError, match=r"stream_recent_points \(10000\) must be at least"):
        AnomalySettings(stream_batch=4096)  # 4 batches in hand: 16,384 points to remember
    with pytest.raises(ValidationError, match="stream_batch"):
        AnomalySettings(stream_batch=100_001, stream_recent_points=1_000_000)
