"""Each source's streaming detector and what it learnt, kept in JetStream KV so that it survives.

The state of a source (key `<consumer>.<source>`) in the bucket `nexus_anomaly_stream_state` is
one npz (`encode_state`): its `SourceDetector`'s state, the model it belongs to (the kind and parsed
parameters: a state of another model is not resumed), and which of the source's points it has
learnt, by stream sequence: every one up to `floor`, and the `recent` ones above it, with the
likelihood of each that was flagged. A replica keeps the sources it serves in memory (at most
`max_sources`, least recently used first out) with the KV revision they were saved at, and
loads a source it does not hold from KV, so a restarted replica, or a source whose points reach
another replica, resumes rather than learns from zero.

A batch of points is learnt, then saved per source with compare-and-set on that revision, before
the points are acknowledged. When another replica saved the source in between, the save fails;
the source is reloaded and the batch applied again on what the other replica saved. A point
already learnt (its sequence is at most `floor` or among `recent`) is not learnt again: it is
answered with its recorded verdict, so a redelivered point publishes the same anomaly (whose
event id JetStream de-duplicates). `floor` follows the consumer's ack floor (no point at or
below it is delivered again); `recent` keeps at most `max_recent` sequences, and past that the
oldest are folded into `floor`. A state always fits one KV value (`StateLimits`: the record at
its fullest is counted, the detector gets the rest, shared among its values); a source too wide
for that has its points refused (`max_width`). See docs/adr/0021-streaming-state-and-throughput.md
and docs/adr/0026-stream-throughput.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from nexus.anomaly.detectors.online import (
    MAX_STATE_BYTES,
    OnlineVerdict,
    SourceDetector,
    State,
    decode_state,
    encode_state,
    state_bytes,
    warm_up,
)
from nexus.anomaly.streamconfig import StreamingConfig
from nexus.common.errors import Aborted, ResourceExhausted, Unavailable
from nexus.common.kv import open_key_value

BUCKET = "nexus_anomaly_stream_state"
LEARNT = Counter(
    "nexus_anomaly_stream_points_learnt_total",
    "Metric points the sources' streaming detectors answered (learnt, or answered from the record "
    "when delivered again), by detector kind.",
    ["kind"],
)
LEARN_SECONDS = Counter(
    "nexus_anomaly_stream_learn_seconds_total",
    "Time the sources' streaming detectors spent scoring and learning points, by detector kind.",
    ["kind"],
)
SAVED_BYTES = Counter(
    "nexus_anomaly_stream_state_bytes_total",
    "Bytes of streaming detector states saved to KV (one save per source per batch).",
)
TOO_LARGE = Counter(
    "nexus_anomaly_stream_state_too_large_total",
    "Streaming detector states that could not be saved because they were over what a KV value "
    "may hold (the source's points were given back, not acknowledged).",
)
SAVE_ATTEMPTS = 5
"""Compare-and-set attempts of one batch of a source before its points are given back."""
_DETECTOR = "detector."
HEADROOM = 4096  # a KV value shares the NATS payload limit with the message's headers

log = logging.getLogger(__name__)

Point = tuple[int, Sequence[float]]
"""A point to learn: its stream sequence and its values."""
T = TypeVar("T")


@dataclass(frozen=True)
class StateLimits:
    """What a source's saved state must fit.

    Attributes:
        bytes: The most bytes its encoded state may take (what one KV value can hold).
        max_recent: The most sequences its record of recent points holds.
    """

    bytes: int
    max_recent: int

    def detector_budget(self, config: StreamingConfig) -> int:
        """The bytes left to the source's detector (`SourceDetector.state_budget`) beside the
        model and the record of learnt points at its fullest (`SourceStream.encode`)."""
        recent = 8 * self.max_recent
        return self.bytes - state_bytes(np.asarray(config.model).nbytes, 8, recent, recent)


class SourceStream:
    """One source's detector and the sequences of the points it has learnt.

    Args:
        source: The source.
        config: The source's configuration (its threshold and suppress apply from now on).
        detector: Its detector, fresh or resumed (built within `limits`).
        floor: Every point of the source at or below this sequence was learnt (or is past).
        recent: Sequences above `floor` learnt, each with its likelihood when it was flagged
            (NaN when it was not).
        revision: The KV revision this state was loaded from or saved at (0: none).
        limits: What the encoded state must fit: a fresh detector gets what the record leaves
            (`StateLimits.detector_budget`), so that the state always fits.
    """

    def __init__(
        self,
        source: str,
        config: StreamingConfig,
        detector: SourceDetector | None = None,
        floor: int = 0,
        recent: dict[int, float] | None = None,
        revision: int = 0,
        *,
        limits: StateLimits,
    ) -> None:
        self.source = source
        self.config = config
        self.limits = limits
        self.detector = detector or config.source_detector(limits.detector_budget(config))
        self.floor = floor
        self.recent = recent or {}
        self.revision = revision

    def configure(self, config: StreamingConfig) -> SourceStream:
        """This stream under `config`: itself with the new threshold and suppression when the
        model is the same, else a fresh detector (keeping the revision, to save over it)."""
        if config.model != self.config.model:
            return SourceStream(self.source, config, revision=self.revision, limits=self.limits)
        if config != self.config:
            self.detector.retune(config.threshold, config.suppress)
            self.config = config
        return self

    def apply(self, points: Sequence[Point]) -> list[OnlineVerdict]:
        """Learns each point (in order) not learnt before; verdicts of all of them (a point
        learnt before, or earlier in `points`, gets its recorded verdict). The points to learn
        go through the detector at once."""
        verdicts: list[OnlineVerdict | None] = []
        learning: dict[int, int] = {}  # sequence: its place in `verdicts`
        for seq, _ in points:
            recorded = None if seq in learning else self.recorded(seq)
            if recorded is None and seq not in learning:
                learning[seq] = len(verdicts)
            verdicts.append(recorded)
        learnt = self.learn([points[at] for at in learning.values()])
        for at, verdict in zip(learning.values(), learnt, strict=True):
            verdicts[at] = verdict
        return [
            verdict if verdict is not None else self._again(seq, verdicts[learning[seq]])
            for (seq, _), verdict in zip(points, verdicts, strict=True)
        ]

    @staticmethod
    def _again(seq: int, first: OnlineVerdict | None) -> OnlineVerdict:
        """The recorded verdict of a point that came twice in one batch."""
        assert first is not None, f"point {seq} was learnt"
        flagged = first.is_anomaly
        return OnlineVerdict(first.likelihood if flagged else 0.0, flagged, 0)

    def recorded(self, seq: int) -> OnlineVerdict | None:
        """The verdict of a point learnt before; None when it was not."""
        if seq <= self.floor:
            return OnlineVerdict(0.0, False, 0)
        likelihood = self.recent.get(seq)
        if likelihood is None:
            return None
        flagged = not math.isnan(likelihood)
        return OnlineVerdict(likelihood if flagged else 0.0, flagged, 0)

    def learn(self, points: Sequence[Point]) -> list[OnlineVerdict]:
        """Scores points (in order), learns from them, records them."""
        verdicts = self.detector.update_many([values for _, values in points])
        recent = self.recent
        for (seq, _), verdict in zip(points, verdicts, strict=True):
            recent[seq] = verdict.likelihood if verdict.is_anomaly else math.nan
        return verdicts

    def compact(self, ack_floor: int, max_recent: int) -> None:
        """Forgets what needs no remembering: sequences at or below the consumer's ack floor,
        and past `max_recent` the oldest (folded into `floor`). `recent` is in the order the
        points were learnt, which is stream order but for late redeliveries, so this looks at
        its oldest entries only."""
        self.floor = max(self.floor, ack_floor)
        recent = self.recent
        while recent:
            oldest = next(iter(recent))
            if oldest > self.floor and len(recent) <= max_recent:
                break
            del recent[oldest]
            self.floor = max(self.floor, oldest)

    def encode(self) -> bytes:
        """The state as stored in KV."""
        state: State = {f"{_DETECTOR}{k}": v for k, v in self.detector.get_state().items()}
        state["model"] = np.asarray(self.config.model)
        state["floor"] = np.asarray(self.floor, dtype=np.uint64)
        state["recent"] = np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))
        state["flagged"] = np.fromiter(
            self.recent.values(), dtype=np.float64, count=len(self.recent)
        )
        return encode_state(state)

    @classmethod
    def decode(
        cls,
        source: str,
        data: bytes,
        config: StreamingConfig,
        revision: int,
        *,
        limits: StateLimits,
    ) -> SourceStream:
        """The stream saved as `data` under `config`, within `limits`; a fresh one when `data`
        belongs to another model.

        Raises:
            ValueError: `data` is not such a state, or one too wide for `limits`.
        """
        state = decode_state(data)
        if str(state.get("model", "")) != config.model:
            return cls(source, config, revision=revision, limits=limits)
        detector = config.source_detector(limits.detector_budget(config))
        detector.set_state(
            {k[len(_DETECTOR) :]: v for k, v in state.items() if k.startswith(_DETECTOR)}
        )
        recent = dict(zip(state["recent"].tolist(), state["flagged"].tolist(), strict=True))
        return cls(source, config, detector, int(state["floor"]), recent, revision, limits=limits)


@dataclass(frozen=True)
class Advanced:
    """What learning a batch did to one source: its points' verdicts, or why it failed."""

    config: StreamingConfig
    verdicts: list[OnlineVerdict] | None = None
    error: Exception | None = None


class StreamStates:
    """The sources' streams: in memory (LRU), saved in KV.

    Args:
        nc: The NATS connection.
        executor: Where detectors learn and states are encoded (CPU work, off the event loop).
        consumer: The durable consumer whose points the states learn: a source's state is the
            key `<consumer>.<source>`, so two deployments on one NATS (two durables, each
            getting every point) do not learn each point into one state twice.
        max_sources: Most sources held in memory.
        max_recent: Most recent sequences a state remembers above the ack floor.
        ttl_s: A source's state not saved for this long is dropped from KV (0: kept forever).
    """

    def __init__(
        self,
        nc: Client,
        executor: Executor,
        *,
        consumer: str,
        max_sources: int,
        max_recent: int,
        ttl_s: float,
    ) -> None:
        self._nc = nc
        self._executor = executor
        self._consumer = consumer
        self._max_sources = max_sources
        self._max_recent = max_recent
        self._config = api.KeyValueConfig(
            bucket=BUCKET,
            description="Nexus anomaly: each source's streaming detector state",
            history=1,
            ttl=ttl_s or None,
        )
        self._kv: KeyValue | None = None
        self._streams: OrderedDict[str, SourceStream] = OrderedDict()
        self._widths: dict[tuple[str, StateLimits], int] = {}
        self._learning = asyncio.Lock()  # fair: batches learn in the order they asked

    async def start(self) -> None:
        """Compiles the detectors (before the first batch waits on it), creates or binds the
        bucket."""
        started = time.perf_counter()
        await self._run(warm_up)
        log.info("streaming detectors ready in %.1f s", time.perf_counter() - started)
        self._kv = await open_key_value(self._nc.jetstream(), self._config)

    def key(self, source: str) -> str:
        """The KV key of a source's state."""
        return f"{self._consumer}.{source}"

    @property
    def limits(self) -> StateLimits:
        """What each source's saved state must fit (KV values share the server's payload
        limit)."""
        return StateLimits(self._limit(), self._max_recent)

    def max_width(self, config: StreamingConfig) -> int:
        """The most values a point of a source under `config` may have for its state to be
        saved (`SourceDetector.max_width` within `limits`; 0: none fits)."""
        limits = self.limits
        key = (config.model, limits)
        if key not in self._widths:
            budget = limits.detector_budget(config)
            self._widths[key] = config.source_detector(budget).max_width
        return self._widths[key]

    def held(self, source: str) -> SourceStream | None:
        """The source's stream in memory, if held."""
        return self._streams.get(source)

    async def advance(
        self,
        batch: Mapping[str, Sequence[Point]],
        config_of: Callable[[str], StreamingConfig],
        ack_floor: int,
    ) -> dict[str, Advanced]:
        """Learns each source's points (in the order given) and saves each source's state.

        One batch at a time: a call waits for the one before it (in the order they came), so
        that each source learns its batches in order while the next batch is parsed.

        Returns:
            Per source: the verdicts of its points, or why they could not be learnt and saved
            (`Unavailable`: KV did not answer; `Aborted`: other replicas kept winning the
            compare-and-set); its points should then be given back.
        """
        async with self._learning:
            return await self._advance(batch, config_of, ack_floor)

    async def _advance(
        self,
        batch: Mapping[str, Sequence[Point]],
        config_of: Callable[[str], StreamingConfig],
        ack_floor: int,
    ) -> dict[str, Advanced]:
        results: dict[str, Advanced] = {}
        pending = dict(batch)
        for _ in range(SAVE_ATTEMPTS if pending else 0):
            pending = await self._attempt(pending, config_of, ack_floor, results)
            if not pending:
                return results
        for source in pending:
            why = Aborted(f"source {source}: other replicas kept saving its state first")
            results[source] = Advanced(config_of(source), error=why)
        return results

    async def _attempt(
        self,
        batch: Mapping[str, Sequence[Point]],
        config_of: Callable[[str], StreamingConfig],
        ack_floor: int,
        results: dict[str, Advanced],
    ) -> dict[str, Sequence[Point]]:
        """Learns and saves each source's points once, into `results`; the sources another
        replica saved first (to try again, reloaded)."""
        streams = await self._streams_of(batch, config_of, results)
        encoded = await self._run(partial(self._apply, streams, batch, ack_floor))
        saved = await asyncio.gather(
            *(self._save(source, streams[source], encoded[source][1]) for source in streams)
        )
        retry = {}
        for source, outcome in zip(streams, saved, strict=True):
            config = streams[source].config
            if outcome is None:
                retry[source] = batch[source]
            elif isinstance(outcome, Exception):
                results[source] = Advanced(config, error=outcome)
            else:
                results[source] = Advanced(config, encoded[source][0])
        return retry

    async def _streams_of(
        self,
        sources: Mapping[str, object],
        config_of: Callable[[str], StreamingConfig],
        failed: dict[str, Advanced],
    ) -> dict[str, SourceStream]:
        """Each source's stream under its configuration, loading those not held; a source
        whose state cannot be loaded goes to `failed`."""
        configs = {source: config_of(source) for source in sources}
        missing = [s for s in sources if s not in self._streams]
        loaded = await asyncio.gather(*(self._load(s, configs[s]) for s in missing))
        found: dict[str, SourceStream | Exception] = dict(zip(missing, loaded, strict=True))
        streams = {}
        for source in sources:
            stream = found[source] if source in found else self._streams[source]
            if isinstance(stream, Exception):
                failed[source] = Advanced(configs[source], error=stream)
            else:
                streams[source] = self._hold(source, stream.configure(configs[source]))
        return streams

    def _hold(self, source: str, stream: SourceStream) -> SourceStream:
        self._streams[source] = stream
        self._streams.move_to_end(source)
        if len(self._streams) > self._max_sources:
            self._streams.popitem(last=False)
        return stream

    async def _load(self, source: str, config: StreamingConfig) -> SourceStream | Exception:
        try:
            entry = await self._bucket().get(self.key(source))
        except KeyNotFoundError as err:  # never saved, or deleted (a tombstone has a revision)
            tombstone = getattr(err.entry, "revision", None) or 0
            return SourceStream(source, config, revision=tombstone, limits=self.limits)
        except (NatsError, TimeoutError) as err:
            return Unavailable(f"cannot load the streaming state of {source}: {err!r}")
        decode = partial(
            SourceStream.decode,
            source,
            entry.value or b"",
            config,
            entry.revision or 0,
            limits=self.limits,
        )
        try:
            return await self._run(decode)  # CPU work: off the event loop
        except (ValueError, KeyError, TypeError, OSError) as err:
            log.error(
                "source %s: its saved streaming state is unusable (%s); starting over", source, err
            )
            return SourceStream(source, config, revision=entry.revision or 0, limits=self.limits)

    def _apply(
        self,
        streams: Mapping[str, SourceStream],
        batch: Mapping[str, Sequence[Point]],
        ack_floor: int,
    ) -> dict[str, tuple[list[OnlineVerdict], bytes]]:
        """Learns every source's points and encodes its state (CPU: runs on the executor)."""
        done = {}
        for source, stream in streams.items():
            started = time.perf_counter()
            verdicts = stream.apply(batch[source])
            kind = stream.config.kind
            LEARN_SECONDS.labels(kind).inc(time.perf_counter() - started)
            LEARNT.labels(kind).inc(len(verdicts))
            stream.compact(ack_floor, self._max_recent)
            done[source] = (verdicts, stream.encode())
        return done

    async def _save(self, source: str, stream: SourceStream, data: bytes) -> int | Exception | None:
        """Saves with compare-and-set: the new revision; None when another replica saved the
        source first (its stream is dropped from memory, to be reloaded); what went wrong when
        KV did not answer or the state is over what it can hold (dropped too: memory is ahead
        of KV; the points are given back, not acknowledged)."""
        limit = self._limit()
        if len(data) > limit:  # states are built to fit (StateLimits): the server's limit fell
            self._streams.pop(source, None)
            TOO_LARGE.inc()
            log.error(
                "source %s: its streaming state (%d bytes) is over the %d a KV value can hold;"
                " its points are given back", source, len(data), limit,
            )  # fmt: skip
            return ResourceExhausted.too_large(
                f"streaming state of source {source}", len(data), limit
            )
        try:
            stream.revision = await self._bucket().update(
                self.key(source), data, last=stream.revision
            )
            SAVED_BYTES.inc(len(data))
        except KeyWrongLastSequenceError:
            self._streams.pop(source, None)
            return None
        except (NatsError, TimeoutError) as err:
            self._streams.pop(source, None)
            return Unavailable(f"cannot save the streaming state of {source}: {err!r}")
        return stream.revision

    def _limit(self) -> int:
        return min(MAX_STATE_BYTES, self._nc.max_payload - HEADROOM)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _bucket(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv
