"""Per-key token buckets, in memory (each gateway replica counts on its own)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets by key: `rate_per_minute` tokens flow in, at most `burst` are kept.

    The table holds at most `max_keys` buckets; the least recently used goes first. Forgetting a
    bucket only refills it, so the bound costs at most one extra burst to a key that was idle
    longer than every other.

    Args:
        burst: Bucket size: the most requests a key may make at once.
        max_keys: Most buckets kept.
        clock: Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self, *, burst: int, max_keys: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._burst = float(max(1, burst))
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str, rate_per_minute: int) -> float:
        """Takes one token for `key`.

        Returns:
            0 when the request may go on, else the seconds until a token is there.
        """
        if rate_per_minute <= 0:
            return 0.0
        rate = rate_per_minute / 60.0
        bucket = self._bucket(key)
        now = self._clock()
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _bucket(self, key: str) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        bucket = _Bucket(tokens=self._burst, updated=self._clock())
        self._buckets[key] = bucket
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return bucket
