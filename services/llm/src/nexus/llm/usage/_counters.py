"""The counters of the usage totals: one KV entry's integers, and a query's rows."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace

from nexus.llm.types import UsageRecord

NANO = 1_000_000_000
"""Nano-dollars per dollar: costs are summed as integers, exact in any order."""


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
            cost_nano_usd=round(record.usage.cost_usd * NANO),
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


def total_row(group: tuple[str, str, str], counters: Counters) -> UsageTotalRow:
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
        cost_usd=counters.cost_nano_usd / NANO,
        mean_latency_ms=mean_ms,
    )
