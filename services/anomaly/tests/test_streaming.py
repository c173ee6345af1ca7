"""Streaming detection over real NATS: watchers, bound detectors, and a NATS restart mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import grpc
import pytest
from anomaly_testing import (
    BASELINE,
    Client,
    ScoringSpy,
    StartHost,
    Traffic,
    all_acked,
    cloud,
    configure_streaming,
    points,
    settled,
    streaming_detections,
    unique,
)
from nats.aio.client import Client as Nats

from nexus.anomaly.streaming import STREAM
from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.anomaly.v1.events_pb2 import AnomalyDetected
from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.common.events import DeadLetter, DeadLetters, EventBus
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.paging import every_page

pytestmark = pytest.mark.integration

SPIKE = [50.0, 50.0, 50.0, 50.0]  # extreme on every feature: every detector flags it


async def publish(bus: EventBus, source: str, values: list[float], point_id: str) -> None:
    await bus.publish(
        f"nexus.metrics.{source}", MetricPoint(source=source, id=point_id, values=values)
    )


async def warm_up(bus: EventBus, source: str, n: int = 20) -> None:
    for i, row in enumerate(cloud(n, seed=3) * 0.1):
        await publish(bus, source, row.tolist(), f"warm-{i}")


async def keep_spiking(bus: EventBus, source: str) -> None:
    """Publishes a spike every 0.1 s (at most 100): a watcher started at any time sees one."""
    for i in range(100):
        await publish(bus, source, SPIKE, f"spike-{i}")
        await asyncio.sleep(0.1)


async def first_anomaly(client: Client, source: str, bus: EventBus) -> pb.WatchAnomaliesResponse:
    """Watches a source while spikes are published until the anomaly of one arrives."""
    call = client.anomaly.WatchAnomalies(
        pb.WatchAnomaliesRequest(source=source), metadata=client.metadata
    )
    spiker = asyncio.create_task(keep_spiking(bus, source))
    try:
        async with asyncio.timeout(20):
            while True:  # a warm-up point may be flagged too
                reply: pb.WatchAnomaliesResponse = await call.read()  # type: ignore[assignment]
                if reply.anomaly.point_id.startswith("spike-"):
                    return reply
    finally:
        spiker.cancel()
        call.cancel()


async def test_a_streamed_anomaly_reaches_a_watcher(
    client: Client, anomaly: ServiceHost, admin_key: str, nats_client: Nats
) -> None:
    bus = EventBus(nats_client, "test")
    source = unique("src")
    await configure_streaming(anomaly.port, [source], key=admin_key)
    await warm_up(bus, source)
    reply = await first_anomaly(client, source, bus)
    assert reply.anomaly.source == source
    assert reply.anomaly.detector == f"streaming:{BASELINE.kind}"
    assert reply.anomaly.point_id.startswith("spike-")
    assert reply.anomaly.threshold == BASELINE.threshold
    assert BASELINE.threshold <= reply.anomaly.score <= 1.0  # a likelihood


async def train_and_bind(client: Client, name: str, source: str) -> None:
    """Trains an Isolation Forest on normal points, promotes it and binds `source` to it."""
    request = pb.TrainDetectorRequest(
        name=name,
        algorithm=pb.ALGORITHM_ISOLATION_FOREST,
        points=points(cloud()),
        promote_to="production",
    )
    await client.anomaly.TrainDetector(request, metadata=client.metadata)
    bind = pb.BindSourceRequest(source=source, detector=name)
    await client.anomaly.BindSource(bind, metadata=client.metadata)


async def test_list_sources_pages(client: Client) -> None:
    name, sources = unique(), sorted(unique("src") for _ in range(3))
    await train_and_bind(client, name, sources[0])
    for source in sources[1:]:
        bind = pb.BindSourceRequest(source=source, detector=name)
        await client.anomaly.BindSource(bind, metadata=client.metadata)

    async def page(token: str) -> tuple[list[str], str]:
        request = pb.ListSourcesRequest(page_size=2, page_token=token)
        reply = await client.anomaly.ListSources(request, metadata=client.metadata)
        return [b.source for b in reply.bindings], reply.next_page_token

    pages = await every_page(page)
    listed = [source for page in pages for source in page]
    assert listed == sorted(set(listed))
    assert set(sources) <= set(listed)
    assert all(len(p) == 2 for p in pages[:-1])
    bad = pb.ListSourcesRequest(page_token="garbage")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.anomaly.ListSources(bad, metadata=client.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_bound_detector_scores_its_source(client: Client, nats_client: Nats) -> None:
    bus = EventBus(nats_client, "test")
    name, source = unique(), unique("src")
    await train_and_bind(client, name, source)
    listed = await client.anomaly.ListSources(pb.ListSourcesRequest(), metadata=client.metadata)
    assert any(b.source == source and b.detector == name for b in listed.bindings)
    call = client.anomaly.WatchAnomalies(
        pb.WatchAnomaliesRequest(source=source), metadata=client.metadata
    )
    seen: set[str] = set()
    spiker = asyncio.create_task(keep_spiking(bus, source))
    try:
        async with asyncio.timeout(20):
            while name not in seen:
                reply = await call.read()
                seen.add(reply.anomaly.detector)  # type: ignore[union-attr]
    finally:
        spiker.cancel()
        call.cancel()
    assert name in seen


async def test_binding_an_unknown_detector_is_not_found(client: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.anomaly.BindSource(
            pb.BindSourceRequest(source="s", detector=unique()), metadata=client.metadata
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_no_point_is_lost_across_a_nats_restart(
    nats_server: NatsServer, start_anomaly: StartHost
) -> None:
    common = NexusSettings(nats_url=nats_server.url, registry_signing_key="k", auth_enabled=False)
    host = await start_anomaly(common)
    name, source = unique(), unique("src")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        await train_and_bind(Client(channel, ""), name, source)
    nc = await connect(common, "publisher")
    bus = EventBus(nc, "test")
    spikes = [f"spike-{i}" for i in range(60)]
    for point_id in spikes[:30]:
        await publish(bus, source, SPIKE, point_id)
    await asyncio.to_thread(nats_server.restart)
    for point_id in spikes[30:]:
        await publish(bus, source, SPIKE, point_id)
    detected = await collect_detected(nc, detector=name, expected=len(spikes))
    await nc.drain()
    assert detected == set(spikes)


async def collect_detected(
    nc: Nats, *, detector: str, expected: int, timeout_s: float = 60
) -> set[str]:
    """Point ids of `detector`'s anomalies in the ANOMALY stream, until `expected` arrive."""
    sub = await nc.jetstream().pull_subscribe("nexus.anomaly.detected", stream=STREAM.name)
    seen: set[str] = set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while len(seen) < expected:
                with contextlib.suppress(Exception):
                    for msg in await sub.fetch(100, timeout=1):
                        anomaly = AnomalyDetected.FromString(msg.data)
                        if anomaly.detector == detector:
                            seen.add(anomaly.point_id)
                        await msg.ack()
    return seen


async def test_every_point_of_concurrent_sources_is_scored_once(
    nats_server: NatsServer, start_anomaly: StartHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds of points from concurrent sources with idle pauses between them: every point is
    scored exactly once and every spike detected, within seconds. The consumer used to lose
    whole batches here (back after the 30 s ack wait, or, lost again, never)."""
    spy = ScoringSpy(monkeypatch)
    common = NexusSettings(nats_url=nats_server.url, registry_signing_key="k", auth_enabled=False)
    host = await start_anomaly(common)
    nc = await connect(common, "publisher")
    traffic = Traffic(EventBus(nc, "test"), sources=8, per_round=150)
    await configure_streaming(host.port, traffic.sources)
    for _ in range(3):
        await traffic.round()
        await asyncio.sleep(1.5)  # idle: heartbeats, expiring pull requests
    durable = host.settings.stream_durable  # type: ignore[attr-defined]
    await asyncio.wait_for(settled(nc.jetstream(), durable, spy, len(traffic.published)), 15)
    detected = await streaming_detections(nc.jetstream())
    await nc.drain()
    assert spy.scored == Counter(traffic.published.values())  # each point once, nothing else
    assert {point: detected[point] for point in traffic.spikes} == dict.fromkeys(traffic.spikes, 1)


async def test_a_point_whose_anomaly_cannot_be_published_is_scored_once(
    nats_server: NatsServer, start_anomaly: StartHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_fast = "nexus.common.events._publish.publish_backoff_s"
    monkeypatch.setattr(fail_fast, lambda attempt: 0.01)
    spy = ScoringSpy(monkeypatch)
    common = NexusSettings(nats_url=nats_server.url, registry_signing_key="k", auth_enabled=False)
    host = await start_anomaly(common)
    durable = host.settings.stream_durable  # type: ignore[attr-defined]
    nc = await connect(common, "publisher")
    bus, js, source = EventBus(nc, "test"), nc.jetstream(), unique("src")
    await configure_streaming(host.port, [source])
    await warm_up(bus, source)
    await asyncio.wait_for(settled(js, durable, spy, 20), 10)
    await js.delete_stream(STREAM.name)  # its anomaly cannot be published: it fails, comes again
    await publish(bus, source, SPIKE, "spike")
    await asyncio.sleep(1.0)  # 0.25 s, then 0.5 s before the next deliveries
    await bus.ensure_streams(STREAM)
    await asyncio.wait_for(settled(js, durable, spy, 21), 10)
    detected = await streaming_detections(js)
    await nc.drain()
    assert spy.scored[(source, tuple(SPIKE))] == 1  # redeliveries publish the first verdict
    assert detected == Counter({"spike": 1})


async def test_a_malformed_point_is_a_dead_letter(
    nats_server: NatsServer, start_anomaly: StartHost
) -> None:
    common = NexusSettings(nats_url=nats_server.url, registry_signing_key="k", auth_enabled=False)
    host = await start_anomaly(common)
    nc = await connect(common, "publisher")
    bus, letters = EventBus(nc, "test"), DeadLetters(nc.jetstream())
    point_id = await bus.publish(
        "nexus.metrics.cpu", MetricPoint(source="cpu", id="p1", values=[1.0, float("nan")])
    )
    found: list[DeadLetter] = []
    async with asyncio.timeout(10):
        while not found:
            found = await letters.list()
            await asyncio.sleep(0.05)
    await nc.drain()
    [letter] = found
    assert (letter.event_id, letter.consumer) == (point_id, host.settings.stream_durable)  # type: ignore[attr-defined]
    assert (letter.reason, letter.deliveries, letter.subject) == (
        "rejected",
        1,
        "nexus.metrics.cpu",
    )
    assert "finite" in letter.error


async def test_a_point_too_wide_for_its_source_state_is_a_dead_letter(
    nats_server: NatsServer, start_anomaly: StartHost
) -> None:
    """The default detector keeps windows of 48 KB per value: a point of 64 values could not
    have its learning saved in one KV value, so it is refused (its field named) rather than
    learnt into a state that no restart would see; a narrower point of the source is learnt."""
    common = NexusSettings(nats_url=nats_server.url, registry_signing_key="k", auth_enabled=False)
    host = await start_anomaly(common)
    nc = await connect(common, "publisher")
    bus, letters, js = EventBus(nc, "test"), DeadLetters(nc.jetstream()), nc.jetstream()
    wide = await bus.publish(
        "nexus.metrics.wide", MetricPoint(source="wide", id="w", values=[1.0] * 64)
    )
    await bus.publish("nexus.metrics.wide", MetricPoint(source="wide", id="n", values=[1.0] * 8))
    found: list[DeadLetter] = []
    async with asyncio.timeout(10):
        while not found:
            found = await letters.list()
            await asyncio.sleep(0.05)
    durable = host.settings.stream_durable  # type: ignore[attr-defined]
    await all_acked(js, durable)
    await nc.drain()
    [letter] = found
    assert (letter.event_id, letter.reason, letter.deliveries) == (wide, "rejected", 1)
    assert "values" in letter.error
    assert "has 64 values" in letter.error
