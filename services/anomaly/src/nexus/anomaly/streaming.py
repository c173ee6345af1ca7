"""Scoring metric streams as points arrive.

Points published on `nexus.metrics.<source>` are consumed through one durable consumer that the
replicas share. Each source has a streaming detector (no training needed); a source bound to a
trained detector is also scored by that model, through the model runtime's batcher, so that many
sources' points (and ScorePoints calls) are scored together. Anomalies are published on
`nexus.anomaly.detected` with an event id derived from the input's, so a redelivered point cannot
publish the same anomaly twice; a point whose anomalies could not be published keeps its
verdicts for the redelivery, so it is scored (and teaches the streaming detector) once. A
malformed point is rejected: the consumer moves it to the dead letters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from nexus.anomaly.detectors import StreamingDetectors
from nexus.anomaly.engine import AnomalyEngine, Selector
from nexus.anomaly.settings import AnomalySettings
from nexus.anomaly.sources import SourceBindings
from nexus.api.anomaly.v1.events_pb2 import AnomalyDetected
from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.common.caching import TTLCache
from nexus.common.errors import InvalidArgument, NexusError
from nexus.common.events import DAY_S, GIB, METRICS, Consumer, Event, EventBus, Stream
from nexus.common.names import check_name

METRICS_SUBJECT = "nexus.metrics.>"
DETECTED_SUBJECT = "nexus.anomaly.detected"
STREAM = Stream("ANOMALY", ("nexus.anomaly.>",), max_age_s=7 * DAY_S, max_bytes=GIB)
"""The anomaly service's events: findings that workflows act upon, kept a week to cover a long
outage of a consumer."""
STREAMING = "streaming"
WATCH_QUEUE = 1024
UNPUBLISHED_CAPACITY = 10_000
"""Points whose verdicts wait for a redelivery to be published (kept in memory, newest)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """What scoring one point found: its source, values and detections (none: normal)."""

    source: str
    values: np.ndarray
    detections: list[Detection]


@dataclass(frozen=True)
class Detection:
    """One detector's verdict that a point is an anomaly."""

    detector: str
    version: str
    score: float
    threshold: float


class StreamProcessor:
    """Consumes metric points, detects anomalies, publishes them, feeds watchers."""

    def __init__(
        self,
        bus: EventBus,
        engine: AnomalyEngine,
        bindings: SourceBindings,
        settings: AnomalySettings,
    ) -> None:
        self._bus = bus
        self._engine = engine
        self._bindings = bindings
        self._settings = settings
        self._detectors = StreamingDetectors(
            alpha=settings.stream_alpha,
            threshold=settings.stream_threshold,
            warmup=settings.stream_warmup,
        )
        self._consumer: Consumer | None = None
        self._unpublished: TTLCache[str, Verdict] = TTLCache(
            "anomaly_unpublished_verdicts", maxsize=UNPUBLISHED_CAPACITY
        )

    async def start(self) -> None:
        """Ensures the streams and starts consuming."""
        await self._bus.ensure_streams(METRICS, STREAM)
        self._consumer = await self._bus.consume(
            METRICS_SUBJECT,
            MetricPoint,
            self.handle,
            durable=self._settings.stream_durable,
            stream=METRICS.name,
            batch=self._settings.stream_batch,
            concurrency=self._settings.stream_concurrency,
            ack_wait_s=self._settings.stream_ack_wait_s,
            max_deliver=self._settings.stream_max_deliver,
        )

    async def stop(self) -> None:
        """Stops consuming."""
        if self._consumer is not None:
            await self._consumer.stop()

    async def handle(self, event: Event[MetricPoint]) -> None:
        """Scores one point and publishes its anomalies.

        Raises:
            InvalidArgument: A malformed point (dead-lettered by the consumer, never retried).
            Unavailable: An anomaly could not be published; the redelivered point publishes the
                same verdict rather than being scored again.
        """
        verdict = self._unpublished.get(event.id) or await self._score(event)
        self._unpublished.delete(event.id)
        try:
            for detection in verdict.detections:
                await self._publish(event, verdict, detection)
        except Exception:
            self._unpublished.set(event.id, verdict)
            raise

    async def _score(self, event: Event[MetricPoint]) -> Verdict:
        source, values = _point_of(event)
        detections = [
            *self._stream_detection(source, values),
            *await self._model_detection(source, values),
        ]
        return Verdict(source, values, detections)

    async def watch(self, source: str) -> AsyncIterator[AnomalyDetected]:
        """Anomalies as they are published (of one source, or all when empty)."""
        queue: asyncio.Queue[AnomalyDetected] = asyncio.Queue(WATCH_QUEUE)

        async def enqueue(event: Event[AnomalyDetected]) -> None:
            if source and event.data.source != source:
                return
            if queue.full():
                log.warning("watcher too slow: dropping anomaly %s", event.id)
                return
            queue.put_nowait(event.data)

        watcher = await self._bus.watch(DETECTED_SUBJECT, AnomalyDetected, enqueue)
        try:
            while True:
                yield await queue.get()
        finally:
            await watcher.stop()

    def _stream_detection(self, source: str, values: np.ndarray) -> list[Detection]:
        result = self._detectors.update(source, values)
        if not result.is_anomaly:
            return []
        return [Detection(STREAMING, "", result.score, result.threshold)]

    async def _model_detection(self, source: str, values: np.ndarray) -> list[Detection]:
        """The bound detector's verdict; its batcher scores concurrent points (and ScorePoints
        calls) of one version together."""
        binding = self._bindings.get(source)
        if binding is None:
            return []
        selector = Selector(alias=binding.alias, routing_key=source)
        try:
            scored = await self._engine.score(binding.detector, values.reshape(1, -1), selector)
        except NexusError as err:
            log.warning("source %s: bound detector unusable: %s", source, err)
            return []
        if not scored.is_anomaly[0]:
            return []
        model = scored.model
        return [Detection(model.name, model.version, float(scored.scores[0]), scored.threshold)]

    async def _publish(
        self, event: Event[MetricPoint], verdict: Verdict, detection: Detection
    ) -> None:
        point = event.data
        anomaly = AnomalyDetected(
            source=verdict.source,
            point_id=point.id or event.id,
            values=verdict.values.tolist(),
            score=detection.score,
            threshold=detection.threshold,
            detector=detection.detector,
            model_version=detection.version,
            labels=dict(point.labels),
        )
        if point.HasField("time"):
            anomaly.time.CopyFrom(point.time)
        event_id = f"{event.id}.{detection.detector}.{detection.version}"
        await self._bus.publish(DETECTED_SUBJECT, anomaly, event_id=event_id)


def _point_of(event: Event[MetricPoint]) -> tuple[str, np.ndarray]:
    """The source (the subject's last token) and the values of a point, validated."""
    source = check_name(event.subject.rsplit(".", 1)[-1], "subject")
    if event.data.source and event.data.source != source:
        raise InvalidArgument.for_field(
            "source", f"is {event.data.source!r}, subject says {source!r}"
        )
    values = np.asarray(event.data.values, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise InvalidArgument.for_field("values", "must be non-empty and finite")
    return source, values
