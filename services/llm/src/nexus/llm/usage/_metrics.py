"""The Prometheus metrics of LLM calls."""

from __future__ import annotations

import functools
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.metrics import MetricWrapperBase

from nexus.llm.types import UsageRecord

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
