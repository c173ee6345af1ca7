"""What a write keeps of the idempotent call that made it, so that the call run again finds it.

A keyed call runs again when its first run could not record its outcome (its process died, or
NATS lost the answer) after its effect was stored. Writes that are not repeatable by nature
(making something new, appending) keep the running call (`idempotent_call()`) in the record they
write, never shown to clients; the run again sees it there and answers with what is stored
instead of applying the write a second time. See docs/adr/0020-fault-suite-and-calls-run-again.md.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

from nexus.common.idempotency._store import idempotent_call

MAX_REMEMBERED_CALLS = 64
"""Calls a record remembers (the newest): a call run again after this many later writes to the
same record is no longer recognised."""


def new_id(kind: str) -> str:
    """A new 32-hex-digit id for a `kind` of thing a call makes: random outside an idempotent
    call; inside one, derived from the call, so that its run again gets the same id and finds
    what its first run made."""
    call = idempotent_call()
    if not call:
        return uuid.uuid4().hex
    return hashlib.sha256(f"{kind}\0{call}".encode()).hexdigest()[:32]


def ran_before(calls: Iterable[str]) -> bool:
    """Whether the idempotent call running now is one of `calls` (those that wrote a record):
    the run again of a call whose first run already wrote it."""
    call = idempotent_call()
    return bool(call) and call in calls


def with_call(calls: Iterable[str]) -> tuple[str, ...]:
    """`calls` with the running idempotent call added (unchanged outside one), the newest
    `MAX_REMEMBERED_CALLS` kept."""
    call = idempotent_call()
    kept = tuple(calls)
    if not call:
        return kept
    return (*kept, call)[-MAX_REMEMBERED_CALLS:]
