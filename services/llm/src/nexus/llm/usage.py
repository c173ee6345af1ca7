"""Usage accounting: metrics, a usage event and per-day totals of every LLM call.

`UsageLedger.record` takes one `UsageRecord` and
- counts it in Prometheus (`nexus_llm_requests_total`, `nexus_llm_tokens_total`,
  `nexus_llm_cost_usd_total`, `nexus_llm_request_duration_seconds`),
- publishes a `nexus.llm.v1.UsageRecorded` CloudEvent on `nexus.llm.usage` (stream `LLM`),
- adds it to the per-day totals in the KV bucket `nexus_llm_usage`, under the key
  `<YYYYMMDD>.<api key id>.<model>.<provider>` (each part escaped by `encode_token`).

Totals are JSON counters updated with KV compare-and-set, retried on conflict, so replicas that
record at once never lose an update. Amounts are integers (cost in nano-dollars, latency in
microseconds) so that sums are exact whatever order the replicas add them in. Within a replica,
records of the same key that arrive while a write is in flight are added together and written
once (group commit): a busy key costs one KV round trip per write, not per call.

Recording never raises to its caller: failures are logged. `submit` records in the background;
`drain` and `stop` wait for what is still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import string
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

from nexus.api.llm.v1.events_pb2 import UsageRecorded
from nexus.common.errors import Aborted, InvalidArgument, ResourceExhausted, Unavailable
from nexus.common.events import DAY_S, GIB, EventBus, Stream
from nexus.common.kv import open_key_value
from nexus.llm.settings import LlmSettings
from nexus.llm.types import TokenUsage, UsageRecord

log = logging.getLogger(__name__)

BUCKET = "nexus_llm_usage"
"""The KV bucket of per-day usage totals."""
STREAM = Stream("LLM", ("nexus.llm.>",), max_age_s=7 * DAY_S, max_bytes=GIB)
"""The llm service's events: one small usage event per call, kept a week for billing exports
(the usage KV totals answer queries)."""
SUBJECT = "nexus.llm.usage"
READ_YOUR_WRITES_S = 2.0
"""Longest a totals query waits for this replica's records still being written."""
"""The subject of `UsageRecorded` events."""
MAX_RANGE_DAYS = 366
"""Most days (inclusive) one totals query may span."""
MAX_TOTAL_ROWS = 10_000
"""Most (key, model, provider) rows one totals query may return."""
MAX_KEY_ID_CHARS = 128
"""Longest API key id."""
MAX_NAME_CHARS = 256
"""Longest model or provider name kept in the totals."""
DRAIN_TIMEOUT_S = 10.0
"""How long `stop` waits for records in flight."""

_NANO = 1_000_000_000
_INT32_MAX = 2**31 - 1
_CAS_ATTEMPTS = 64
_FETCH_BATCH = 512
_FETCH_TIMEOUT_S = 5.0
_SCAN_INACTIVE_S = 30.0
_MAX_VALUE_BYTES = 1024
_KNOWN_KEYS = 4_096

REQUESTS = Counter(
    "nexus_llm_requests_total",
    "LLM calls (chat, embed, extract), by key, model, provider, operation and cache use.",
    ["api_key", "model", "provider", "operation", "cached"],
)
TOKENS = Counter(
    "nexus_llm_tokens_total",
    "Tokens of LLM calls, by key, model, provider and direction (prompt or completion).",
    ["api_key", "model", "provider", "direction"],
)
COST = Counter(
    "nexus_llm_cost_usd_total",
    "Cost of LLM calls in US dollars, by key, model and provider.",
    ["api_key", "model", "provider"],
)
DURATION = Histogram(
    "nexus_llm_request_duration_seconds",
    "Wall time of LLM calls, provider retries included.",
    ["model", "provider", "operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120),
)


@dataclass(frozen=True)
class UsageTotalRow:
    """Totals of one key, model and provider over a range of days.

    Attributes:
        api_key_id: The API key id.
        model: The model name asked for.
        provider: The provider that answered.
        requests: Calls.
        cached_requests: Of which served from a cache.
        prompt_tokens: Prompt tokens.
        completion_tokens: Generated tokens.
        cost_usd: Cost in US dollars.
        mean_latency_ms: Mean wall time of a call in milliseconds.
    """

    api_key_id: str
    model: str
    provider: str
    requests: int
    cached_requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    mean_latency_ms: float


@dataclass
class Counters:
    """The counters of one KV entry (one day, key, model, provider); every one an integer."""

    requests: int = 0
    cached_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nano_usd: int = 0
    latency_us_sum: int = 0

    @classmethod
    def of(cls, record: UsageRecord) -> Counters:
        """The counters of one call."""
        return cls(
            requests=1,
            cached_requests=int(record.cached),
            prompt_tokens=record.usage.prompt_tokens,
            completion_tokens=record.usage.completion_tokens,
            cost_nano_usd=round(record.usage.cost_usd * _NANO),
            latency_us_sum=round(record.latency_s * 1_000_000),
        )

    def add(self, other: Counters) -> None:
        """Adds `other` to these counters."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def plus(self, other: Counters) -> Counters:
        """These counters and `other`, added into new counters."""
        total = replace(self)
        total.add(other)
        return total

    def encode(self) -> bytes:
        """The JSON value stored in KV."""
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}).encode()

    @classmethod
    def decode(cls, value: bytes) -> Counters:
        """Parses a stored value; missing counters are zero.

        Raises:
            ValueError: When the value is not a JSON object of integers.
        """
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        counters = cls()
        for f in fields(counters):
            number = data.get(f.name, 0)
            if not isinstance(number, int):
                raise ValueError(f"{f.name} is not an integer")
            setattr(counters, f.name, number)
        return counters


_SAFE = frozenset(string.ascii_letters + string.digits + "_-")
_EMPTY_TOKEN = "="


def encode_token(text: str) -> str:
    """`text` as one KV key token: letters, digits, '_' and '-' stay, every other byte becomes
    `=XX` (hex), and "" becomes "=". Readable for ordinary names ("gpt-4o" stays "gpt-4o",
    "openai/gpt-4o" is "openai=2Fgpt-4o") and reversible with `decode_token`."""
    if not text:
        return _EMPTY_TOKEN
    return "".join(c if c in _SAFE else "".join(f"={b:02X}" for b in c.encode()) for c in text)


def decode_token(token: str) -> str:
    """The text `encode_token` made `token` from.

    Raises:
        ValueError: When `token` is not one `encode_token` makes.
    """
    if token == _EMPTY_TOKEN:
        return ""
    out = bytearray()
    index = 0
    while index < len(token):
        if token[index] == "=":
            out.append(int(token[index + 1 : index + 3], 16))
            index += 3
        else:
            out.append(ord(token[index]))
            index += 1
    return out.decode()


def day_token(day: date) -> str:
    """The day part of a totals key: `YYYYMMDD`."""
    return day.strftime("%Y%m%d")


def totals_key(day: date, api_key_id: str, model: str, provider: str) -> str:
    """The KV key of one day's totals of a key, model and provider."""
    parts = (api_key_id, model, provider)
    return ".".join((day_token(day), *(encode_token(p) for p in parts)))


def parse_totals_key(key: str) -> tuple[date, str, str, str]:
    """The day, key id, model and provider of a totals key.

    Raises:
        ValueError: When `key` is not one `totals_key` makes.
    """
    day, api_key_id, model, provider = key.split(".")
    parsed = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC).date()
    return parsed, decode_token(api_key_id), decode_token(model), decode_token(provider)


def check_range(start: date, end: date) -> list[date]:
    """The days from `start` to `end`, both included.

    Raises:
        InvalidArgument: When `start` is after `end` or the range spans more than
            `MAX_RANGE_DAYS` days.
    """
    if start > end:
        raise InvalidArgument.for_field("start_time", f"{start} is after the end {end}")
    span = (end - start).days + 1
    if span > MAX_RANGE_DAYS:
        raise InvalidArgument.for_field(
            "start_time", f"the range spans {span} days, more than {MAX_RANGE_DAYS}"
        )
    return [start + timedelta(days=n) for n in range(span)]


def check_key_id(api_key_id: str, field: str = "api_key_id") -> str:
    """A non-empty key id of at most `MAX_KEY_ID_CHARS` characters.

    Raises:
        InvalidArgument: Otherwise.
    """
    if not api_key_id:
        raise InvalidArgument.for_field(field, "must not be empty")
    if len(api_key_id) > MAX_KEY_ID_CHARS:
        raise InvalidArgument.for_field(field, f"longer than {MAX_KEY_ID_CHARS} characters")
    return api_key_id


def _check_model(model: str) -> str:
    if len(model) > MAX_NAME_CHARS:
        raise InvalidArgument.for_field("model", f"longer than {MAX_NAME_CHARS} characters")
    return model


def _sane(record: UsageRecord) -> UsageRecord:
    """`record` with negative or non-finite amounts replaced by 0 (logged): a provider's odd
    report must not poison the totals."""
    usage = record.usage
    numbers = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cost_usd": usage.cost_usd,
        "latency_s": record.latency_s,
    }
    bad = [k for k, v in numbers.items() if not math.isfinite(v) or v < 0]
    if not bad:
        return record
    log.warning("usage of %s has invalid %s; counted as 0", record.model, ", ".join(bad))
    clean = {k: (0 if k in bad else v) for k, v in numbers.items()}
    tokens = TokenUsage(
        prompt_tokens=int(clean["prompt_tokens"]),
        completion_tokens=int(clean["completion_tokens"]),
        cost_usd=float(clean["cost_usd"]),
    )
    return replace(record, usage=tokens, latency_s=float(clean["latency_s"]))


def observe(record: UsageRecord) -> None:
    """Counts one call in the Prometheus metrics."""
    key, model, provider = record.api_key_id, record.model, record.provider
    cached = "true" if record.cached else "false"
    _child(REQUESTS, key, model, provider, record.operation, cached).inc()
    _child(TOKENS, key, model, provider, "prompt").inc(record.usage.prompt_tokens)
    _child(TOKENS, key, model, provider, "completion").inc(record.usage.completion_tokens)
    _child(COST, key, model, provider).inc(record.usage.cost_usd)
    _child(DURATION, model, provider, record.operation).observe(record.latency_s)


@functools.lru_cache(maxsize=4096)
def _child(metric: MetricWrapperBase, *values: str) -> Any:
    """The labelled child of a metric, cached: `labels()` takes a lock and builds its key on
    every call (five times a call here). Most recently used label sets are kept; the labels
    themselves stay in the metric whatever the cache holds."""
    return metric.labels(*values)


def usage_event(record: UsageRecord) -> UsageRecorded:
    """The `UsageRecorded` event of one call."""
    when = Timestamp()
    when.FromNanoseconds(round(record.time * _NANO))
    return UsageRecorded(
        api_key_id=record.api_key_id,
        operation=record.operation,
        model=record.model,
        provider=record.provider,
        prompt_tokens=min(record.usage.prompt_tokens, _INT32_MAX),
        completion_tokens=min(record.usage.completion_tokens, _INT32_MAX),
        cost_usd=record.usage.cost_usd,
        latency_ms=record.latency_s * 1000.0,
        cached=record.cached,
        time=when,
    )


def record_day(record: UsageRecord) -> date:
    """The UTC day a call ended on."""
    return datetime.fromtimestamp(record.time, UTC).date()


@dataclass
class _Batch:
    """Counters waiting to be added to one key, and the records waiting for them."""

    counters: Counters
    waiters: list[asyncio.Future[None]]


class _GroupWriter:
    """Adds counters to KV entries with compare-and-set, one writer task per key: what arrives
    for a key while its write is in flight is summed and written next, in one update.

    The revision and value it last wrote of a key are remembered (`_KNOWN_KEYS` most recent
    keys), so the next write of that key tries them without reading the entry first: one KV
    round trip instead of two while this replica is the only writer. When another replica
    wrote meanwhile, the compare-and-set fails and the entry is read, as for any conflict.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._pending: dict[str, _Batch] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._known: OrderedDict[str, tuple[int, Counters]] = OrderedDict()
        self.conflicts = 0
        """Compare-and-set conflicts met (another replica wrote first), for tests and logs."""

    def add(self, key: str, counters: Counters) -> asyncio.Future[None]:
        """Queues `counters` for `key`.

        Returns:
            A future done once they are stored (or failed with the error that stopped them).
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch = self._pending.setdefault(key, _Batch(Counters(), []))
        batch.counters.add(counters)
        batch.waiters.append(waiter)
        if key not in self._writers:
            self._writers[key] = asyncio.create_task(self._write(key))
        return waiter

    async def _write(self, key: str) -> None:
        try:
            while (batch := self._pending.pop(key, None)) is not None:
                try:
                    await self._apply(key, batch.counters)
                except BaseException as err:
                    _settle(batch.waiters, err)
                    if isinstance(err, asyncio.CancelledError):
                        raise
                else:
                    _settle(batch.waiters, None)
        finally:
            self._writers.pop(key, None)
            if (left := self._pending.pop(key, None)) is not None:  # cancelled meanwhile
                _settle(left.waiters, asyncio.CancelledError())

    async def _apply(self, key: str, delta: Counters) -> None:
        """Adds `delta` to the entry of `key`: read (unless this writer knows its latest
        revision), add, write if nobody wrote meanwhile."""
        known = self._known.pop(key, None)
        if known is not None:
            revision, total = known
            if await self._put(key, total.plus(delta), revision):
                return
            self.conflicts += 1  # another replica wrote since; read it, without waiting
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:
                self.conflicts += 1
                await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:  # also a deleted key; `create` handles its tombstone
                if await self._put(key, Counters().plus(delta), None):
                    return
                continue
            revision = entry.revision or 0
            if await self._put(key, _decoded(key, entry.value).plus(delta), revision):
                return
        raise Aborted(f"usage totals {key} kept changing; {_CAS_ATTEMPTS} attempts failed")

    async def _put(self, key: str, total: Counters, last: int | None) -> bool:
        """Writes `total` if the entry's revision is still `last` (None: if there is none);
        False when another writer came first."""
        try:
            if last is None:
                revision = await self._kv.create(key, total.encode())
            else:
                revision = await self._kv.update(key, total.encode(), last=last)
        except KeyWrongLastSequenceError:
            return False
        self._known[key] = (int(revision), total)
        while len(self._known) > _KNOWN_KEYS:
            self._known.popitem(last=False)
        return True

    def cancel(self) -> None:
        """Cancels every writer (waiters get CancelledError)."""
        for task in list(self._writers.values()):
            task.cancel()


def _decoded(key: str, value: bytes | None) -> Counters:
    try:
        return Counters.decode(value or b"{}")
    except ValueError as err:
        log.error("usage totals %s are malformed (%s); starting them over", key, err)
        return Counters()


def _settle(waiters: Iterable[asyncio.Future[None]], err: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():  # its record was cancelled
            continue
        if err is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(err)


class UsageLedger:
    """Records the usage of every LLM call and answers totals per key, model and day.

    Args:
        bus: The event bus the usage events go out on.
        js: JetStream, for the totals bucket.
        settings: The service's settings (`usage_retention_days`).
        bucket: The KV bucket of the totals (tests use their own).
    """

    def __init__(
        self, bus: EventBus, js: JetStreamContext, settings: LlmSettings, *, bucket: str = BUCKET
    ) -> None:
        self._bus = bus
        self._js = js
        self._settings = settings
        self._bucket_name = bucket
        self._kv: KeyValue | None = None
        self._writer: _GroupWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def conflicts(self) -> int:
        """Compare-and-set conflicts met so far (writes another replica won)."""
        return self._writer.conflicts if self._writer is not None else 0

    async def start(self) -> None:
        """Creates the `LLM` stream and the totals bucket, or updates their configuration."""
        await self._bus.ensure_streams(STREAM)
        self._kv = await self._bind_bucket()
        self._writer = _GroupWriter(self._kv)

    async def _bind_bucket(self) -> KeyValue:
        retention_s = self._settings.usage_retention_days * 24 * 3600.0
        config = api.KeyValueConfig(
            bucket=self._bucket_name,
            description="Nexus llm: usage totals per day, API key, model and provider",
            history=1,
            ttl=retention_s,
            max_value_size=_MAX_VALUE_BYTES,
            storage=api.StorageType.FILE,
        )
        return await open_key_value(self._js, config)

    async def stop(self) -> None:
        """Waits up to `DRAIN_TIMEOUT_S` for records in flight, then cancels what is left."""
        if not await self.drain(DRAIN_TIMEOUT_S):
            log.warning("usage records still in flight at stop are dropped")
        for task in list(self._tasks):
            task.cancel()
        if self._writer is not None:
            self._writer.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Waits until no record is in flight.

        Returns:
            False when `timeout_s` passed first.
        """
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def submit(self, record: UsageRecord) -> None:
        """Records `record` in a background task (see `record`); `drain` and `stop` wait for
        it. Call it from the request path: it returns at once."""
        self._enter()  # counted now, so that a drain right after waits for it
        task = asyncio.create_task(self._record(record))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._leave())  # also when cancelled before it ran

    async def record(self, record: UsageRecord) -> None:
        """Counts one call in the metrics, publishes its `UsageRecorded` event and adds it to
        its day's totals. Never raises: failures are logged."""
        self._enter()
        try:
            await self._record(record)
        finally:
            self._leave()

    def _enter(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    async def _record(self, record: UsageRecord) -> None:
        try:
            record = _sane(record)
            observe(record)
            results = await asyncio.gather(
                self._publish(record), self._add_to_totals(record), return_exceptions=True
            )
        except Exception:
            log.exception("recording the usage of a %s call failed", record.model)
            return
        for what, result in zip(("event", "totals"), results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "lost the usage %s of a %s call of key %s: %r",
                    what, record.model, record.api_key_id, result,
                )  # fmt: skip

    async def _publish(self, record: UsageRecord) -> None:
        await self._bus.publish(SUBJECT, usage_event(record), subject_hint=record.api_key_id)

    async def _add_to_totals(self, record: UsageRecord) -> None:
        if not record.api_key_id or len(record.api_key_id) > MAX_KEY_ID_CHARS:
            raise InvalidArgument.for_field("api_key_id", "missing or too long")
        if max(len(record.model), len(record.provider)) > MAX_NAME_CHARS:
            raise InvalidArgument.for_field("model", f"longer than {MAX_NAME_CHARS} characters")
        key = totals_key(record_day(record), record.api_key_id, record.model, record.provider)
        await self._writer_().add(key, Counters.of(record))

    async def totals(
        self, *, api_key_id: str | None, model: str = "", start: date, end: date
    ) -> list[UsageTotalRow]:
        """Totals per key, model and provider over the days from `start` to `end` (UTC, both
        included), sorted by key, model and provider.

        Args:
            api_key_id: Only this key's; None for every key.
            model: Only this model's; "" for every model.
            start: The first day.
            end: The last day.

        Raises:
            InvalidArgument: A bad range (see `check_range`), key id or model.
            ResourceExhausted: More than `MAX_TOTAL_ROWS` rows; name a key or a model.
        """
        days = check_range(start, end)
        await self.drain(timeout_s=READ_YOUR_WRITES_S)  # this replica's records first
        key_token = "*" if api_key_id is None else encode_token(check_key_id(api_key_id))
        model_token = encode_token(_check_model(model)) if model else "*"
        prefix = f"$KV.{self._bucket_name}."
        subjects = [f"{prefix}{day_token(d)}.{key_token}.{model_token}.*" for d in days]
        groups: dict[tuple[str, str, str], Counters] = {}
        stream = f"KV_{self._bucket_name}"
        async with contextlib.aclosing(scan_latest(self._js, stream, subjects)) as entries:
            async for subject, value in entries:
                self._add_entry(groups, subject[len(prefix) :], value)
        return [_row(group, counters) for group, counters in sorted(groups.items())]

    @staticmethod
    def _add_entry(groups: dict[tuple[str, str, str], Counters], key: str, value: bytes) -> None:
        try:
            _, api_key_id, model, provider = parse_totals_key(key)
        except ValueError:
            log.error("ignoring a usage totals entry with a malformed key: %s", key)
            return
        group = (api_key_id, model, provider)
        if group not in groups and len(groups) >= MAX_TOTAL_ROWS:
            raise ResourceExhausted.too_large("the usage totals", len(groups) + 1, MAX_TOTAL_ROWS)
        groups.setdefault(group, Counters()).add(_decoded(key, value))

    def _writer_(self) -> _GroupWriter:
        assert self._writer is not None, "start() first"
        return self._writer


def _row(group: tuple[str, str, str], counters: Counters) -> UsageTotalRow:
    api_key_id, model, provider = group
    mean_ms = counters.latency_us_sum / counters.requests / 1000.0 if counters.requests else 0.0
    return UsageTotalRow(
        api_key_id=api_key_id,
        model=model,
        provider=provider,
        requests=counters.requests,
        cached_requests=counters.cached_requests,
        prompt_tokens=counters.prompt_tokens,
        completion_tokens=counters.completion_tokens,
        cost_usd=counters.cost_nano_usd / _NANO,
        mean_latency_ms=mean_ms,
    )


async def scan_latest(
    js: JetStreamContext, stream: str, subjects: list[str]
) -> AsyncGenerator[tuple[str, bytes], None]:
    """The subject and latest message of every subject of a KV stream under `subjects`
    (deleted keys left out), read with one ephemeral consumer that is deleted afterwards.

    Raises:
        Unavailable: When NATS fails to answer.
    """
    name = f"usage_scan_{uuid.uuid4().hex}"
    config = api.ConsumerConfig(
        name=name,
        filter_subjects=subjects,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=api.AckPolicy.NONE,
        mem_storage=True,
        inactive_threshold=_SCAN_INACTIVE_S,
    )
    try:
        pending = (await js.add_consumer(stream, config)).num_pending
        sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    except (NatsError, TimeoutError) as err:
        raise Unavailable(f"cannot read the usage totals: {err!r}") from err
    try:
        while pending:
            try:
                msgs = await sub.fetch(min(pending, _FETCH_BATCH), timeout=_FETCH_TIMEOUT_S)
            except (NatsError, TimeoutError) as err:
                raise Unavailable(f"cannot read the usage totals: {err!r}") from err
            for msg in msgs:
                pending = msg.metadata.num_pending
                if (msg.headers or {}).get("KV-Operation") not in {"DEL", "PURGE"}:
                    yield msg.subject, msg.data
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await sub.unsubscribe()
            await js.delete_consumer(stream, name)
