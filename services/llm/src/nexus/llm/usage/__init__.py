"""Usage accounting of every LLM call: metrics, a usage event and per-day totals.

One concern per module: `_keys` (the totals keys and the checks of a query), `_counters` (the
integer counters and a query's rows), `_metrics` (Prometheus), `_events` (the `UsageRecorded`
event and the LLM stream), `_writer` (group commit with compare-and-set), `_scan` (reading many
keys at once) and `_ledger` (`UsageLedger`, which records calls and answers totals with them).
"""

from nexus.llm.usage._counters import Counters, UsageTotalRow
from nexus.llm.usage._events import STREAM, SUBJECT, usage_event
from nexus.llm.usage._keys import (
    MAX_KEY_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_RANGE_DAYS,
    check_key_id,
    check_range,
    decode_token,
    encode_token,
    parse_totals_key,
    totals_key,
)
from nexus.llm.usage._ledger import (
    BUCKET,
    DRAIN_TIMEOUT_S,
    MAX_TOTAL_ROWS,
    READ_YOUR_WRITES_S,
    UsageLedger,
)
from nexus.llm.usage._metrics import observe

__all__ = [
    "BUCKET",
    "DRAIN_TIMEOUT_S",
    "MAX_KEY_ID_CHARS",
    "MAX_NAME_CHARS",
    "MAX_RANGE_DAYS",
    "MAX_TOTAL_ROWS",
    "READ_YOUR_WRITES_S",
    "STREAM",
    "SUBJECT",
    "Counters",
    "UsageLedger",
    "UsageTotalRow",
    "check_key_id",
    "check_range",
    "decode_token",
    "encode_token",
    "observe",
    "parse_totals_key",
    "totals_key",
    "usage_event",
]
