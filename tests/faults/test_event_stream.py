"""Streamed metric points through a NATS crash: SIGKILL in the middle of the stream, a restart
on the same port and store, and every point scored exactly once, every spike detected."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from anomaly_testing import (
    ScoringSpy,
    Traffic,
    configure_streaming,
    settled,
    streaming_detections,
)

from nexus.anomaly.server import create
from nexus.anomaly.settings import AnomalySettings
from nexus.common.events import DeadLetters, EventBus
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually


async def crash_when(server: NatsServer, traffic: Traffic, published: int) -> None:
    """Kills NATS with SIGKILL once `published` points were stored, then starts it again on the
    same port and store directory."""
    await eventually(lambda: len(traffic.published) >= published, timeout_s=10)
    server.kill()
    await asyncio.sleep(0.5)
    await asyncio.to_thread(server.start)


async def test_every_point_is_scored_once_across_a_nats_crash(
    nats_server: NatsServer, start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = ScoringSpy(monkeypatch)
    common = NexusSettings(nats_url=nats_server.url, registry_signing_key="k", auth_enabled=False)
    # Points in flight when NATS died come again after the ack wait: keep it short.
    settings = AnomalySettings(grpc_port=0, stream_ack_wait_s=2.0)
    host = await start_service(create, settings, common)
    nc = await connect(common, "publisher")
    traffic = Traffic(EventBus(nc, "test"), sources=8, per_round=150)
    await configure_streaming(host.port, traffic.sources)
    await traffic.round()
    crash = asyncio.create_task(crash_when(nats_server, traffic, len(traffic.published) + 500))
    await traffic.round()  # publishes retry through the crash
    await crash
    await traffic.round()
    await asyncio.wait_for(
        settled(nc.jetstream(), settings.stream_durable, spy, len(traffic.published)), 30
    )
    detected = await streaming_detections(nc.jetstream())
    dead = await DeadLetters(nc.jetstream()).list()
    await nc.drain()
    assert len(traffic.published) == 3 * 8 * 150
    assert spy.scored == Counter(traffic.published.values())  # each point once, nothing else
    assert {point: detected[point] for point in traffic.spikes} == dict.fromkeys(traffic.spikes, 1)
    assert dead == []
