"""Helpers for anomaly tests: real API keys, stubs with a key, generated data, streamed traffic."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

import grpc
import numpy as np
import pytest
from nats.js.client import JetStreamContext

from nexus.anomaly.converters import streaming_of
from nexus.anomaly.detectors.online import OnlineVerdict, WindowedGaussian
from nexus.anomaly.streaming import DETECTED_SUBJECT, STREAM, STREAMING
from nexus.anomaly.streamstate import Point, SourceStream, StreamStates
from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as pb_grpc
from nexus.api.anomaly.v1.events_pb2 import AnomalyDetected
from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.api.operations.v1 import operations_pb2_grpc as ops_grpc
from nexus.common.events import METRICS, EventBus
from nexus.common.server import ServiceHost
from nexus.common.testing.keys import make_key
from nexus.common.testing.waiting import eventually

__all__ = [
    "BASELINE",
    "Client",
    "ScoringSpy",
    "StartHost",
    "Traffic",
    "cloud",
    "configure_streaming",
    "make_key",
    "points",
    "replay",
    "scores",
    "settled",
    "spiky",
    "streamed",
    "streaming_detections",
    "unique",
]

StartHost = Callable[..., Coroutine[Any, Any, ServiceHost]]
"""Starts an anomaly service replica with setting overrides (the `start_anomaly` fixture)."""


class Client:
    """Stubs on one channel, sending an API key with every call."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.anomaly = pb_grpc.AnomalyServiceStub(channel)
        self.models = models_grpc.ModelRegistryServiceStub(channel)
        self.operations = ops_grpc.OperationsServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),)


def unique(prefix: str = "det") -> str:
    """A name no other test uses (the session NATS is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cloud(n: int = 300, d: int = 4, seed: int = 0) -> np.ndarray:
    """Normal points: a Gaussian cloud."""
    return np.random.default_rng(seed).normal(size=(n, d))


def points(rows: np.ndarray) -> list[pb.Point]:
    """Rows as Point messages with ids."""
    return [pb.Point(values=row.tolist(), id=f"p{i}") for i, row in enumerate(rows)]


BASELINE = pb.StreamingConfig(kind=WindowedGaussian.KIND, threshold=0.9999, suppress=0)
"""The windowed Gaussian flags a spike of 50 deviations from a source's second point on (and a
normal point now and then while its window is small): tests that count detections configure it
(the default kind may learn for longer)."""


async def configure_streaming(
    port: int, sources: Iterable[str], config: pb.StreamingConfig = BASELINE, key: str = ""
) -> None:
    """Binds each source to a streaming configuration through the API."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = Client(channel, key)
        for source in sources:
            request = pb.BindSourceRequest(source=source, streaming=config)
            await client.anomaly.BindSource(request, metadata=client.metadata)


SPIKE_EVERY = 25
"""Every 25th point of a source is a spike (as in the reported run)."""


class Traffic:
    """Metric points from concurrent sources, published in rounds: each source publishes its
    series in order, a spike every `SPIKE_EVERY`th point. Every point has its own values, so
    what the service scored can be matched to what was published.

    Args:
        bus: Where to publish.
        sources: How many sources publish at once.
        per_round: Points each source publishes per round.
    """

    def __init__(self, bus: EventBus, sources: int, per_round: int) -> None:
        self._bus = bus
        self._per_round = per_round
        self._sent = dict.fromkeys((unique("src") for _ in range(sources)), 0)
        self._rng = np.random.default_rng(7)
        self.published: dict[str, tuple[str, tuple[float, ...]]] = {}
        """Point id -> its source and values, for each point JetStream stored."""
        self.spikes: set[str] = set()

    @property
    def sources(self) -> list[str]:
        """The sources it publishes for."""
        return list(self._sent)

    async def round(self) -> None:
        """Publishes the next `per_round` points of every source, the sources concurrently."""
        await asyncio.gather(*(self._series(source) for source in self._sent))

    async def _series(self, source: str) -> None:
        for _ in range(self._per_round):
            index = self._sent[source]
            self._sent[source] += 1
            point_id = f"{source}-{index}"
            if index % SPIKE_EVERY == SPIKE_EVERY - 1:
                self.spikes.add(point_id)
                values = [50.0 + index * 1e-3] * 4  # far out on every feature
            else:
                values = self._rng.normal(size=4).tolist()
            await self._bus.publish(
                f"nexus.metrics.{source}",
                MetricPoint(source=source, id=point_id, values=values),
            )
            self.published[point_id] = (source, tuple(values))


class ScoringSpy:
    """Counts the points the streaming detectors learnt into a saved state (a point learnt
    twice counts twice). Learning whose save failed is not counted: the replica throws that
    state away and the points come again, to be learnt on the state KV holds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.scored: Counter[tuple[str, tuple[float, ...]]] = Counter()
        self._unsaved: dict[int, list[tuple[str, tuple[float, ...]]]] = {}
        real_learn, real_save = SourceStream.learn, StreamStates._save

        def learn(stream: SourceStream, points: Sequence[Point]) -> list[OnlineVerdict]:
            self._unsaved.setdefault(id(stream), []).extend(
                (stream.source, tuple(float(v) for v in values)) for _, values in points
            )
            return real_learn(stream, points)

        async def save(
            states: StreamStates, source: str, stream: SourceStream, data: bytes
        ) -> int | Exception | None:
            outcome = await real_save(states, source, stream, data)
            learnt = self._unsaved.pop(id(stream), [])
            if isinstance(outcome, int):  # saved
                self.scored.update(learnt)
            return outcome

        monkeypatch.setattr(SourceStream, "learn", learn)
        monkeypatch.setattr(StreamStates, "_save", save)

    def of(self, source: str) -> Counter[tuple[str, tuple[float, ...]]]:
        """The points of one source learnt (a new durable learns older sources' points too)."""
        return Counter({point: n for point, n in self.scored.items() if point[0] == source})


def spiky(n: int, seed: int = 5) -> list[list[float]]:
    """Two values per point, a spike every 25th."""
    rows = np.random.default_rng(seed).normal(size=(n, 2))
    rows[24::25] += 30.0
    return rows.tolist()


def replay(config: pb.StreamingConfig, rows: Sequence[Sequence[float]]) -> dict[int, float]:
    """The likelihood of each point that one uninterrupted detector of `config` flags."""
    detector = streaming_of(pb.BindSourceRequest(source="s", streaming=config))
    assert detector is not None
    source = detector.source_detector()
    flagged = {}
    for index, row in enumerate(rows):
        verdict = source.update(row)
        if verdict.is_anomaly:
            flagged[index] = verdict.likelihood
    return flagged


async def streamed(js: JetStreamContext, source: str) -> list[tuple[int, float]]:
    """The point index and score of each anomaly of `source`'s streaming detector, in the
    ANOMALY stream."""
    found = []
    sub = await js.subscribe(DETECTED_SUBJECT, stream=STREAM.name, ordered_consumer=True)
    last = (await js.stream_info(STREAM.name)).state.last_seq
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            anomaly = AnomalyDetected.FromString(msg.data)
            if anomaly.source == source and anomaly.detector.startswith(f"{STREAMING}:"):
                found.append((int(anomaly.point_id), anomaly.score))
            if msg.metadata.sequence.stream >= last:
                return found
    finally:
        await sub.unsubscribe()


async def scores(js: JetStreamContext, source: str) -> dict[int, float]:
    """The likelihood of each point `source`'s streaming detector flagged (each flagged once)."""
    found = await streamed(js, source)
    assert Counter(index for index, _ in found).most_common(1)[0][1] == 1
    return dict(found)


async def settled(js: JetStreamContext, durable: str, spy: ScoringSpy, count: int) -> None:
    """Waits until `count` points were scored and the durable has nothing pending or
    unacknowledged (redeliveries after a restart included)."""
    while True:
        info = await js.consumer_info(METRICS.name, durable)
        if spy.scored.total() >= count and not (info.num_pending or info.num_ack_pending):
            return
        await asyncio.sleep(0.1)


async def streaming_detections(js: JetStreamContext) -> Counter[str]:
    """How many times each point id was reported by a streaming detector."""
    found: Counter[str] = Counter()
    last = (await js.stream_info(STREAM.name)).state.last_seq
    for seq in range(1, last + 1):
        anomaly = AnomalyDetected.FromString((await js.get_msg(STREAM.name, seq)).data or b"")
        if anomaly.detector.startswith(f"{STREAMING}:"):
            found[anomaly.point_id] += 1
    return found


async def all_acked(js: JetStreamContext, durable: str) -> None:
    """Waits until the consumer `durable` of the metric points has none pending or unacked."""
    await eventually(lambda: _idle(js, durable), timeout_s=30)


async def _idle(js: JetStreamContext, durable: str) -> bool:
    info = await js.consumer_info("METRICS", durable)
    return not (info.num_pending or info.num_ack_pending)
