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
import logging
from datetime import date

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from nexus.common.errors import InvalidArgument, ResourceExhausted
from nexus.common.events import EventBus
from nexus.common.kv import open_key_value
from nexus.llm.settings import LlmSettings
from nexus.llm.types import UsageRecord
from nexus.llm.usage._counters import Counters, UsageTotalRow, total_row
from nexus.llm.usage._events import STREAM, SUBJECT, sane, usage_event
from nexus.llm.usage._keys import (
    MAX_KEY_ID_CHARS,
    MAX_NAME_CHARS,
    check_key_id,
    check_model,
    check_range,
    day_token,
    encode_token,
    parse_totals_key,
    record_day,
    totals_key,
)
from nexus.llm.usage._metrics import observe
from nexus.llm.usage._scan import scan_latest
from nexus.llm.usage._writer import GroupWriter, decoded

log = logging.getLogger(__name__)

BUCKET = "nexus_llm_usage"
"""The KV bucket of per-day usage totals."""
READ_YOUR_WRITES_S = 2.0
"""Longest a totals query waits for this replica's records still being written."""
MAX_TOTAL_ROWS = 10_000
"""Most (key, model, provider) rows one totals query may return."""
DRAIN_TIMEOUT_S = 10.0
"""How long `stop` waits for records in flight."""

_MAX_VALUE_BYTES = 1024


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
        self._writer: GroupWriter | None = None
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
        self._writer = GroupWriter(self._kv)

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
            record = sane(record)
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
        model_token = encode_token(check_model(model)) if model else "*"
        prefix = f"$KV.{self._bucket_name}."
        subjects = [f"{prefix}{day_token(d)}.{key_token}.{model_token}.*" for d in days]
        groups: dict[tuple[str, str, str], Counters] = {}
        stream = f"KV_{self._bucket_name}"
        async with contextlib.aclosing(scan_latest(self._js, stream, subjects)) as entries:
            async for subject, value in entries:
                self._add_entry(groups, subject[len(prefix) :], value)
        return [total_row(group, counters) for group, counters in sorted(groups.items())]

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
        groups.setdefault(group, Counters()).add(decoded(key, value))

    def _writer_(self) -> GroupWriter:
        assert self._writer is not None, "start() first"
        return self._writer
