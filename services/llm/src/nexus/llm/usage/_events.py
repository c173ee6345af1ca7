"""The usage event of an LLM call, and the stream it goes out on."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from google.protobuf.timestamp_pb2 import Timestamp

from nexus.api.llm.v1.events_pb2 import UsageRecorded
from nexus.common.events import DAY_S, GIB, Stream
from nexus.llm.types import TokenUsage, UsageRecord

log = logging.getLogger(__name__)

STREAM = Stream("LLM", ("nexus.llm.>",), max_age_s=7 * DAY_S, max_bytes=GIB)
"""The llm service's events: one small usage event per call, kept a week for billing exports
(the usage KV totals answer queries)."""
SUBJECT = "nexus.llm.usage"
"""The subject of `UsageRecorded` events."""

_INT32_MAX = 2**31 - 1
_NS_PER_S = 1_000_000_000


def usage_event(record: UsageRecord) -> UsageRecorded:
    """The `UsageRecorded` event of one call."""
    when = Timestamp()
    when.FromNanoseconds(round(record.time * _NS_PER_S))
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


def sane(record: UsageRecord) -> UsageRecord:
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
