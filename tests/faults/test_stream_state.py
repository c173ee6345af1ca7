"""A replica SIGKILLed in the middle of a metric stream, and the next one resumes its sources'
streaming detectors from their saved state: the anomalies of the whole stream are those of one
uninterrupted detector, each published once, and not those of a detector that starts learning
again where the first replica died."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from anomaly_testing import Client, replay, scores, spiky, unique

from nexus.anomaly.detectors.online import WindowedGaussian
from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.common.events import METRICS, EventBus
from nexus.common.launcher import Platform
from nexus.common.nats import connect
from nexus.common.settings import NexusSettings
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.timeout(300)

CONFIG = pb.StreamingConfig(
    kind=WindowedGaussian.KIND, parameters={"window": "40", "step": "5"}, threshold=0.999
)
POINTS = 900
DURABLE = "anomaly-stream"


async def publish_slowly(bus: EventBus, source: str, rows: list[list[float]]) -> None:
    """The stream: a point every few milliseconds, each with its own event id."""
    for index, row in enumerate(rows):
        point = MetricPoint(source=source, id=str(index), values=row)
        await bus.publish(f"nexus.metrics.{source}", point, event_id=f"{source}-{index}")
        await asyncio.sleep(0.003)


def restarted_fresh(rows: list[list[float]], at: int) -> dict[int, float]:
    """What a detector that lost everything at point `at` would have flagged."""
    after = replay(CONFIG, rows[at:])
    return replay(CONFIG, rows[:at]) | {at + i: score for i, score in after.items()}


async def test_a_replica_killed_mid_stream_is_resumed_from_its_saved_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_AUTH_ENABLED", "false")
    monkeypatch.setenv("NEXUS_ANOMALY_STREAM_ACK_WAIT_S", "2")
    platform = Platform(tmp_path, nats_port=0, gateway_port=0, services=["anomaly"])
    try:
        nats_url = await platform.start_nats()
        await platform.start_services()
        replica = platform.children[0]
        source = unique("src")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
            request = pb.BindSourceRequest(source=source, streaming=CONFIG)
            await Client(channel, "").anomaly.BindSource(request)
        nc = await connect(NexusSettings(nats_url=nats_url), "publisher")
        js = nc.jetstream()
        rows = spiky(POINTS)
        publisher = asyncio.create_task(publish_slowly(EventBus(nc, "test"), source, rows))

        async def acked() -> int:
            return (await js.consumer_info(METRICS.name, DURABLE)).ack_floor.stream_seq

        await eventually(lambda: _past(acked, POINTS // 3), timeout_s=60)
        replica.process.kill()  # SIGKILL: no goodbye, whatever was in hand comes again
        replica.process.wait(10)
        killed_at = await acked()
        platform.children.remove(replica)
        await publisher
        await platform.start_services()
        await eventually(lambda: _past(acked, POINTS), timeout_s=120)
        found = await scores(js, source)
        await nc.drain()
    finally:
        platform.stop()
    assert POINTS // 3 <= killed_at < POINTS
    assert found == pytest.approx(replay(CONFIG, rows))
    # A replica that started learning again anywhere near the kill would have answered otherwise.
    for at in range(killed_at - 50, killed_at + 50):
        assert restarted_fresh(rows, at) != replay(CONFIG, rows)


async def _past(acked: Callable[[], Awaitable[int]], count: int) -> bool:
    return await acked() >= count
