"""Scoring metric streams as points arrive, a fetched batch at a time.

Points published on `nexus.metrics.<source>` are consumed through one durable consumer that the
replicas share, a fetched batch at once (`EventBus.consume_batches`). A batch is grouped by
source, each source's points in stream order. Each source's streaming detector (the kind its
binding chose, else the default; no training needed) learns its points, and its state is saved
in KV before they are acknowledged (`StreamStates`), so a restarted replica resumes it and a
redelivered point is not learnt twice. A source bound to a trained detector is also scored by
that model, its points as one matrix through the model runtime's batcher. Anomalies are
published on `nexus.anomaly.detected` with an event id derived from the input's, so a
redelivered point cannot publish the same anomaly twice. A malformed point is rejected on its
own: the consumer moves it to the dead letters, and so is a point with more values than its
source's streaming detector can keep a saved state for (`StreamStates.max_width`: learning that
could not be saved would be lost on a restart). A point whose source's state could not be saved,
or whose anomalies could not be published, comes again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from nats.errors import Error as NatsError

from nexus.anomaly.engine import AnomalyEngine
from nexus.anomaly.settings import AnomalySettings
from nexus.anomaly.sources import SourceBindings
from nexus.anomaly.streamconfig import StreamingConfig, default_config
from nexus.anomaly.streamstate import StreamStates
from nexus.api.anomaly.v1.events_pb2 import AnomalyDetected
from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.common.errors import InvalidArgument, NexusError
from nexus.common.events import DAY_S, GIB, METRICS, Consumer, Event, EventBus, Stream
from nexus.common.names import check_name
from nexus.common.registry import Selector

METRICS_SUBJECT = "nexus.metrics.>"
DETECTED_SUBJECT = "nexus.anomaly.detected"
STREAM = Stream("ANOMALY", ("nexus.anomaly.>",), max_age_s=7 * DAY_S, max_bytes=GIB)
"""The anomaly service's events: findings that workflows act upon, kept a week to cover a long
outage of a consumer."""
STREAMING = "streaming"
"""Streaming detectors' detections name `streaming:<kind>` as their detector."""
WATCH_QUEUE = 1024
DEPTH = 2
"""Batches handled at once: one is parsed, published and acknowledged on the event loop while
the one before it learns on the executor (StreamStates learns one batch at a time, in order)."""

log = logging.getLogger(__name__)


class Point(NamedTuple):
    """A valid point of a fetched batch: its place in the batch, event, source and values (a
    named tuple: one is built per point, at a third of a frozen dataclass's cost)."""

    place: int
    event: Event[MetricPoint]
    source: str
    values: list[float]


@dataclass(frozen=True)
class Detection:
    """One detector's verdict that a point is an anomaly."""

    detector: str
    version: str
    score: float
    threshold: float


Outcomes = list[Exception | None]
Found = dict[int, list[Detection]]
"""Detections by the index of their point in the batch."""


class StreamProcessor:
    """Consumes metric points, detects anomalies, publishes them, feeds watchers."""

    def __init__(
        self,
        bus: EventBus,
        engine: AnomalyEngine,
        bindings: SourceBindings,
        states: StreamStates,
        settings: AnomalySettings,
    ) -> None:
        self._bus = bus
        self._engine = engine
        self._bindings = bindings
        self._states = states
        self._settings = settings
        self._default = default_config()
        self._consumer: Consumer | None = None
        self._ack_floor = 0
        self._floor_reading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Ensures the streams and the state bucket, and starts consuming."""
        await self._bus.ensure_streams(METRICS, STREAM)
        await self._states.start()
        self._consumer = await self._bus.consume_batches(
            METRICS_SUBJECT,
            MetricPoint,
            self.handle,
            durable=self._settings.stream_durable,
            stream=METRICS.name,
            batch=self._settings.stream_batch,
            ack_wait_s=self._settings.stream_ack_wait_s,
            max_deliver=self._settings.stream_max_deliver,
            depth=DEPTH,
        )

    async def stop(self) -> None:
        """Stops consuming."""
        if self._consumer is not None:
            await self._consumer.stop()
        if self._floor_reading is not None:
            self._floor_reading.cancel()
            with suppress(asyncio.CancelledError):
                await self._floor_reading

    def config_of(self, source: str) -> StreamingConfig:
        """The streaming configuration of a source: its binding's, else the default."""
        binding = self._bindings.get(source)
        if binding is None or binding.streaming is None:
            return self._default
        return binding.streaming

    async def handle(self, events: Sequence[Event[MetricPoint]]) -> Outcomes:
        """Scores a fetched batch and publishes its anomalies; the outcome of each event.

        An event's outcome is None when it was scored and its anomalies published;
        InvalidArgument for a malformed point (a dead letter); Unavailable or Aborted when its
        source's state could not be saved or an anomaly could not be published (it comes again,
        and is not learnt twice).
        """
        outcomes: Outcomes = [None] * len(events)
        by_source = _by_source(events, outcomes, self._settings.max_features)
        self._refuse_too_wide(by_source, outcomes)
        streamed, modelled = await asyncio.gather(
            self._stream_detections(by_source, outcomes), self._model_detections(by_source)
        )
        found = {i: streamed.get(i, []) + modelled.get(i, []) for i in streamed.keys() | modelled}
        await self._publish_all(by_source, found, outcomes)
        return outcomes

    def _refuse_too_wide(self, by_source: dict[str, list[Point]], outcomes: Outcomes) -> None:
        """Takes out of `by_source` the points wider than their source's streaming detector
        can save a state for; each one's outcome is its InvalidArgument (a dead letter)."""
        for source, points in list(by_source.items()):
            config = self.config_of(source)
            most = self._states.max_width(config)
            kept = [point for point in points if len(point.values) <= most]
            if len(kept) == len(points):
                continue
            for point in points:
                if len(point.values) > most:
                    outcomes[point.place] = InvalidArgument.for_field(
                        "values",
                        f"has {len(point.values)} values; the {config.kind} streaming detector of"
                        f" source {source!r} can save its state for at most {most} values per"
                        " point (split the source, or choose a kind or parameters with a smaller"
                        " state)",
                    )
            if kept:
                by_source[source] = kept
            else:
                del by_source[source]

    async def _stream_detections(
        self, by_source: dict[str, list[Point]], outcomes: Outcomes
    ) -> Found:
        """Each source's streaming detector learns its points; the flagged ones."""
        batch = {s: [(p.event.sequence, p.values) for p in ps] for s, ps in by_source.items()}
        advanced = await self._states.advance(batch, self.config_of, self._floor())
        found: Found = {}
        for source, result in advanced.items():
            points = by_source[source]
            if result.error is not None:
                for point in points:
                    outcomes[point.place] = result.error
                continue
            assert result.verdicts is not None
            config = result.config
            for point, verdict in zip(points, result.verdicts, strict=True):
                if verdict.is_anomaly:
                    detection = Detection(
                        config.detector_name, "", verdict.likelihood, config.threshold
                    )
                    found[point.place] = [detection]
        return found

    async def _model_detections(self, by_source: dict[str, list[Point]]) -> Found:
        """Points of bound sources scored by their trained detectors, a matrix per source (and
        width); the micro-batcher merges the sources bound to one version."""
        runs = [
            self._model_detection(source, points)
            for source, points in by_source.items()
            for points in _by_width(points)
        ]
        found: Found = {}
        for detections in await asyncio.gather(*runs):
            found.update(detections)
        return found

    async def _model_detection(self, source: str, points: list[Point]) -> Found:
        binding = self._bindings.get(source)
        if binding is None or not binding.detector:
            return {}
        selector = Selector(alias=binding.alias, routing_key=source)
        rows = np.array([point.values for point in points], dtype=np.float64)
        try:
            scored = await self._engine.score(binding.detector, rows, selector)
        except NexusError as err:
            log.warning("source %s: bound detector unusable: %s", source, err)
            return {}
        model = scored.model
        return {
            point.place: [Detection(model.name, model.version, float(score), scored.threshold)]
            for point, score, flagged in zip(points, scored.scores, scored.is_anomaly, strict=True)
            if flagged
        }

    def _floor(self) -> int:
        """The consumer's ack floor as last read (no point at or below it is delivered
        again); a read is started for the next batch when none is in flight."""
        if self._floor_reading is None or self._floor_reading.done():
            self._floor_reading = asyncio.create_task(self._read_floor())
        return self._ack_floor

    async def _read_floor(self) -> None:
        try:
            info = await self._bus.js.consumer_info(METRICS.name, self._settings.stream_durable)
        except (NatsError, TimeoutError) as err:
            log.debug("cannot read the ack floor (%r); keeping %d", err, self._ack_floor)
            return
        self._ack_floor = max(self._ack_floor, info.ack_floor.stream_seq or 0)

    async def _publish_all(
        self, by_source: dict[str, list[Point]], found: Found, outcomes: Outcomes
    ) -> None:
        """Publishes the anomalies of every point still in good standing (its source's state
        saved), all at once; a point whose anomaly could not be published gets that error as
        its outcome."""
        sending = [
            (point, detection)
            for points in by_source.values()
            for point in points
            if point.place in found and outcomes[point.place] is None
            for detection in found[point.place]
        ]
        if not sending:
            return
        events = [
            (_anomaly(point, d), f"{point.event.id}.{d.detector}.{d.version}")
            for point, d in sending
        ]
        sent = await self._bus.publish_many(DETECTED_SUBJECT, events)
        for (point, _), error in zip(sending, sent, strict=True):
            if error is not None and outcomes[point.place] is None:
                outcomes[point.place] = error

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


def _anomaly(point: Point, detection: Detection) -> AnomalyDetected:
    data = point.event.data
    anomaly = AnomalyDetected(
        source=point.source,
        point_id=data.id or point.event.id,
        values=point.values,
        score=detection.score,
        threshold=detection.threshold,
        detector=detection.detector,
        model_version=detection.version,
        labels=dict(data.labels),
    )
    if data.HasField("time"):
        anomaly.time.CopyFrom(data.time)
    return anomaly


def _by_source(
    events: Sequence[Event[MetricPoint]], outcomes: Outcomes, max_features: int
) -> dict[str, list[Point]]:
    """The valid points of a batch by source, each source's in stream order; a malformed one's
    outcome is its InvalidArgument."""
    by_source: dict[str, list[Point]] = {}
    for index, event in enumerate(events):
        try:
            source, values = _point_of(event, max_features)
        except InvalidArgument as err:
            outcomes[index] = err
            continue
        by_source.setdefault(source, []).append(Point(index, event, source, values))
    for points in by_source.values():
        points.sort(key=lambda point: point.event.sequence)
    return by_source


def _by_width(points: list[Point]) -> list[list[Point]]:
    """Points split by their number of values (one matrix each)."""
    widths: dict[int, list[Point]] = {}
    for point in points:
        widths.setdefault(len(point.values), []).append(point)
    return list(widths.values())


def _point_of(event: Event[MetricPoint], max_features: int) -> tuple[str, list[float]]:
    """The source (the subject's last token) and the values of a point, validated."""
    source = _source_of(event.subject)
    if event.data.source and event.data.source != source:
        raise InvalidArgument.for_field(
            "source", f"is {event.data.source!r}, subject says {source!r}"
        )
    values = list(event.data.values)
    if not values or not all(map(math.isfinite, values)):
        raise InvalidArgument.for_field("values", "must be non-empty and finite")
    if len(values) > max_features:
        raise InvalidArgument.for_field(
            "values", f"has {len(values)} values, at most {max_features}"
        )
    return source, values


@functools.lru_cache(maxsize=4096)
def _source_of(subject: str) -> str:
    """The source a subject names, checked (cached: a source publishes many points)."""
    return check_name(subject.rsplit(".", 1)[-1], "subject")
