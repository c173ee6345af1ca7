"""UsageLedger against a real nats-server: metrics, usage events, per-day totals in KV, exact
totals under concurrent replicas, validation and robustness."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from nexus.api.llm.v1.events_pb2 import UsageRecorded
from nexus.common.errors import InvalidArgument, ResourceExhausted
from nexus.common.events import Event, EventBus
from nexus.common.nats import connect
from nexus.common.settings import NexusSettings
from nexus.llm import usage
from nexus.llm.settings import LlmSettings
from nexus.llm.types import TokenUsage, UsageRecord
from nexus.llm.usage import (
    MAX_RANGE_DAYS,
    UsageLedger,
    UsageTotalRow,
    decode_token,
    encode_token,
    parse_totals_key,
    totals_key,
)

pytestmark = pytest.mark.integration

DAY = date(2025, 3, 10)


def at(day: date, hour: int = 12) -> float:
    """Unix time of `hour`:00 UTC on `day`."""
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp()


def call(
    key: str,
    *,
    model: str = "gpt-4o-mini",
    provider: str = "openai",
    prompt: int = 10,
    completion: int = 5,
    cost: float = 0.001,
    latency_s: float = 0.2,
    cached: bool = False,
    day: date = DAY,
    operation: str = "chat",
) -> UsageRecord:
    """One call's usage record."""
    return UsageRecord(
        api_key_id=key,
        operation=operation,
        model=model,
        provider=provider,
        usage=TokenUsage(prompt, completion, cost),
        latency_s=latency_s,
        cached=cached,
        time=at(day),
    )


def new_key() -> str:
    """An API key id no other test uses (the metrics registry is process-wide)."""
    return f"k{uuid.uuid4().hex[:12]}"


@pytest.fixture
def bucket() -> str:
    """A totals bucket of this test's own."""
    return f"test_usage_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def llm_settings() -> LlmSettings:
    return LlmSettings()


async def started(nc: Client, settings: LlmSettings, bucket: str) -> UsageLedger:
    ledger = UsageLedger(EventBus(nc, "nexus/llm-test"), nc.jetstream(), settings, bucket=bucket)
    await ledger.start()
    return ledger


@pytest.fixture
async def ledger(
    nats_client: Client, llm_settings: LlmSettings, bucket: str
) -> AsyncIterator[UsageLedger]:
    ledger = await started(nats_client, llm_settings, bucket)
    yield ledger
    await ledger.stop()
    await nats_client.jetstream().delete_key_value(bucket)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_tokens_escape_reversibly() -> None:
    for text in ["gpt-4o", "", "openai/gpt-4o", "llama3.1:8b", "a.b*c>d e", "modèle-é", "=41"]:
        token = encode_token(text)
        assert all((c.isalnum() and c.isascii()) or c in "_-=" for c in token)
        assert decode_token(token) == text
    assert encode_token("gpt-4o") == "gpt-4o"
    assert encode_token("openai/gpt-4o") == "openai=2Fgpt-4o"
    key = totals_key(DAY, "anonymous", "ollama/llama3.1:8b", "")
    assert key == "20250310.anonymous.ollama=2Fllama3=2E1=3A8b.="
    assert parse_totals_key(key) == (DAY, "anonymous", "ollama/llama3.1:8b", "")


async def test_record_counts_prometheus_metrics(ledger: UsageLedger) -> None:
    key = new_key()
    await ledger.record(call(key, prompt=100, completion=20, cost=0.25, latency_s=0.3))
    await ledger.record(call(key, prompt=7, completion=0, cost=0.0, latency_s=0.01, cached=True))
    await ledger.record(call(key, model="emb", operation="embed", prompt=3, completion=0))

    base = {"api_key": key, "model": "gpt-4o-mini", "provider": "openai"}
    assert sample("nexus_llm_requests_total", **base, operation="chat", cached="false") == 1
    assert sample("nexus_llm_requests_total", **base, operation="chat", cached="true") == 1
    assert sample("nexus_llm_tokens_total", **base, direction="prompt") == 107
    assert sample("nexus_llm_tokens_total", **base, direction="completion") == 20
    assert sample("nexus_llm_cost_usd_total", **base) == pytest.approx(0.25)
    emb = {"api_key": key, "model": "emb", "provider": "openai"}
    assert sample("nexus_llm_requests_total", **emb, operation="embed", cached="false") == 1
    duration = {"model": "emb", "provider": "openai", "operation": "embed"}
    assert sample("nexus_llm_request_duration_seconds_count", **duration) >= 1


async def test_record_publishes_a_usage_event(ledger: UsageLedger, nats_client: Client) -> None:
    key = new_key()
    seen: list[Event[UsageRecorded]] = []
    got = asyncio.Event()

    async def handler(event: Event[UsageRecorded]) -> None:
        if event.data.api_key_id == key:
            seen.append(event)
            got.set()

    bus = EventBus(nats_client, "nexus/llm-test")
    watch = await bus.watch(usage.SUBJECT, UsageRecorded, handler)
    try:
        record = call(key, model="m/x", provider="nexus-local", prompt=12, completion=3)
        await ledger.record(record)
        await asyncio.wait_for(got.wait(), 5)
    finally:
        await watch.stop()

    event = seen[0]
    assert event.subject == "nexus.llm.usage"
    assert event.type == "nexus.llm.v1.UsageRecorded"
    assert event.source == "nexus/llm-test"
    assert event.subject_hint == key
    data = event.data
    assert (data.operation, data.model, data.provider) == ("chat", "m/x", "nexus-local")
    assert (data.prompt_tokens, data.completion_tokens) == (12, 3)
    assert data.cost_usd == pytest.approx(0.001)
    assert data.latency_ms == pytest.approx(200.0)
    assert not data.cached
    assert data.time.ToDatetime(UTC) == datetime.fromtimestamp(record.time, UTC)


async def test_totals_group_by_key_model_and_provider_over_days(ledger: UsageLedger) -> None:
    a, b = "key-a", "key-b"
    model = "openai/gpt-4o:latest"
    for record in [
        call(a, model=model, prompt=10, completion=5, cost=0.5, latency_s=0.1),
        call(a, model=model, prompt=20, completion=6, cost=0.25, latency_s=0.3, cached=True),
        call(a, model=model, provider="azure", cost=0.125),
        call(a, model="small", day=DAY + timedelta(days=1), cost=1.0),
        call(a, model=model, day=DAY + timedelta(days=2), prompt=1, completion=1, latency_s=0.5),
        call(b, model=model, day=DAY - timedelta(days=40)),
    ]:
        await ledger.record(record)

    rows = await ledger.totals(api_key_id=a, start=DAY, end=DAY + timedelta(days=2))
    assert [(r.model, r.provider) for r in rows] == [
        (model, "azure"),
        (model, "openai"),
        ("small", "openai"),
    ]
    assert rows[1] == UsageTotalRow(
        api_key_id=a,
        model=model,
        provider="openai",
        requests=3,
        cached_requests=1,
        prompt_tokens=31,
        completion_tokens=12,
        cost_usd=pytest.approx(0.751),  # type: ignore[arg-type]
        mean_latency_ms=pytest.approx(300.0),  # type: ignore[arg-type]
    )

    one_day = await ledger.totals(api_key_id=a, start=DAY, end=DAY)
    assert [(r.model, r.provider, r.requests) for r in one_day] == [
        (model, "azure", 1),
        (model, "openai", 2),
    ]
    only_model = await ledger.totals(api_key_id=a, model="small", start=DAY, end=DAY + timedelta(3))
    assert [(r.model, r.cost_usd) for r in only_model] == [("small", 1.0)]
    assert (
        await ledger.totals(api_key_id=a, start=DAY - timedelta(30), end=DAY - timedelta(1)) == []
    )
    assert await ledger.totals(api_key_id="nobody", start=DAY, end=DAY) == []

    everyone = await ledger.totals(api_key_id=None, start=DAY - timedelta(40), end=DAY)
    assert [(r.api_key_id, r.provider, r.requests) for r in everyone] == [
        (a, "azure", 1),
        (a, "openai", 2),
        (b, "openai", 1),
    ]


async def test_concurrent_records_of_two_replicas_add_up_exactly(
    nexus_settings: NexusSettings, llm_settings: LlmSettings, bucket: str
) -> None:
    connections = [await connect(nexus_settings, f"replica-{n}") for n in range(2)]
    ledgers = [await started(nc, llm_settings, bucket) for nc in connections]
    try:
        workers, per_worker = 3, 60

        async def worker(ledger: UsageLedger, index: int) -> None:
            for n in range(per_worker):  # one after the other: both replicas write all along
                model = "m1" if n % 3 else "m2"
                await ledger.record(call("shared", model=model, prompt=n, completion=index))

        await asyncio.gather(
            *(worker(ledger, i) for i, ledger in enumerate(ledgers) for _ in range(workers))
        )

        rows = await ledgers[0].totals(api_key_id="shared", start=DAY, end=DAY)
        by_model = {r.model: r for r in rows}
        m2 = len([n for n in range(per_worker) if n % 3 == 0])
        assert by_model["m2"].requests == 2 * workers * m2
        assert by_model["m1"].requests == 2 * workers * (per_worker - m2)
        assert sum(r.prompt_tokens for r in rows) == 2 * workers * sum(range(per_worker))
        assert sum(r.completion_tokens for r in rows) == workers * per_worker  # index 0 and 1
        assert sum(r.cost_usd for r in rows) == pytest.approx(2 * workers * per_worker * 0.001)
        assert sum(ledger.conflicts for ledger in ledgers) > 0, "the replicas never raced"
    finally:
        for ledger in ledgers:
            await ledger.stop()
        await connections[0].jetstream().delete_key_value(bucket)
        for nc in connections:
            await nc.drain()


async def test_stop_waits_for_records_in_flight(
    nats_client: Client, llm_settings: LlmSettings, ledger: UsageLedger, bucket: str
) -> None:
    other = await started(nats_client, llm_settings, bucket)
    for _ in range(40):
        other.submit(call("draining"))
    await other.stop()
    rows = await ledger.totals(api_key_id="draining", start=DAY, end=DAY)
    assert [r.requests for r in rows] == [40]


async def test_recording_never_raises(
    nexus_settings: NexusSettings, llm_settings: LlmSettings, ledger: UsageLedger, bucket: str
) -> None:
    key = new_key()
    odd = replace(call(key), usage=TokenUsage(-5, 3, math.nan), latency_s=math.inf)
    await ledger.record(odd)  # impossible amounts count as 0
    await ledger.record(call("x" * 200))  # a key id too long for the totals: logged, skipped
    rows = await ledger.totals(api_key_id=key, start=DAY, end=DAY)
    assert [(r.requests, r.prompt_tokens, r.completion_tokens, r.cost_usd) for r in rows] == [
        (1, 0, 3, 0.0)
    ]

    nc = await connect(nexus_settings, "closing")
    closed = await started(nc, llm_settings, bucket)
    await nc.close()
    await closed.record(call(key))  # NATS is gone: logged, not raised
    closed.submit(call(key))
    assert await closed.drain(5)
    await closed.stop()
    assert sample("nexus_llm_requests_total", api_key=key, model="gpt-4o-mini",
                  provider="openai", operation="chat", cached="false") == 3  # fmt: skip


async def test_totals_validate_their_arguments(
    ledger: UsageLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidArgument, match="after the end"):
        await ledger.totals(api_key_id=None, start=DAY, end=DAY - timedelta(1))
    with pytest.raises(InvalidArgument, match=f"more than {MAX_RANGE_DAYS}"):
        await ledger.totals(api_key_id=None, start=DAY, end=DAY + timedelta(MAX_RANGE_DAYS))
    assert await ledger.totals(api_key_id=None, start=DAY, end=DAY + timedelta(365)) == []
    with pytest.raises(InvalidArgument, match="api_key_id"):
        await ledger.totals(api_key_id="", start=DAY, end=DAY)
    with pytest.raises(InvalidArgument, match="api_key_id"):
        await ledger.totals(api_key_id="k" * 129, start=DAY, end=DAY)
    with pytest.raises(InvalidArgument, match="model"):
        await ledger.totals(api_key_id=None, model="m" * 257, start=DAY, end=DAY)

    for n in range(3):
        await ledger.record(call(f"many-{n}"))
    monkeypatch.setattr("nexus.llm.usage._ledger.MAX_TOTAL_ROWS", 2)
    with pytest.raises(ResourceExhausted, match="limit of 2"):
        await ledger.totals(api_key_id=None, start=DAY, end=DAY)


async def test_bucket_retention_follows_the_settings(
    nats_client: Client, llm_settings: LlmSettings, ledger: UsageLedger, bucket: str
) -> None:
    js = nats_client.jetstream()
    info = await js.stream_info(f"KV_{bucket}")
    assert info.config.max_age == pytest.approx(400 * 86400)
    shorter = llm_settings.model_copy(update={"usage_retention_days": 30})
    again = await started(nats_client, shorter, bucket)
    await again.stop()
    info = await js.stream_info(f"KV_{bucket}")
    assert info.config.max_age == pytest.approx(30 * 86400)
