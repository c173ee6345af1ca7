"""The keys of the usage totals bucket, and the checks of a totals query's arguments.

A totals key is `<YYYYMMDD>.<api key id>.<model>.<provider>`, each part escaped by
`encode_token`, so that one day, key or model is a subject filter of the bucket's stream.
"""

from __future__ import annotations

import string
from datetime import UTC, date, datetime, timedelta

from nexus.common.errors import InvalidArgument
from nexus.llm.types import UsageRecord

MAX_RANGE_DAYS = 366
"""Most days (inclusive) one totals query may span."""
MAX_KEY_ID_CHARS = 128
"""Longest API key id."""
MAX_NAME_CHARS = 256
"""Longest model or provider name kept in the totals."""

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


def check_model(model: str) -> str:
    """A model name of at most `MAX_NAME_CHARS` characters ("" for every model).

    Raises:
        InvalidArgument: Otherwise.
    """
    if len(model) > MAX_NAME_CHARS:
        raise InvalidArgument.for_field("model", f"longer than {MAX_NAME_CHARS} characters")
    return model


def record_day(record: UsageRecord) -> date:
    """The UTC day a call ended on."""
    return datetime.fromtimestamp(record.time, UTC).date()
