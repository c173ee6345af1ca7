"""Idempotent calls in tests: the state a replica killed in the middle of a call leaves."""

from __future__ import annotations

from nats.aio.client import Client

from nexus.common.auth import key_id_of
from nexus.common.idempotency import BUCKET, scoped_key
from nexus.common.idempotency._store import _Record


async def lose_outcome(nc: Client, api_key: str, key: str, *, bucket: str = BUCKET) -> None:
    """Turns the kept outcome of the call that `api_key` (plaintext) made with the idempotency
    `key` back into an expired claim: what a replica killed after the call's effect, before
    recording its outcome, leaves. The next call with `key` then runs the call again, as the
    retry of such a call does.
    """
    kv = await nc.jetstream().key_value(bucket)
    entry_key = scoped_key(key, key_id_of(api_key) or "")
    entry = await kv.get(entry_key)
    fingerprint = _Record.decode(entry.value or b"").fingerprint
    await kv.update(entry_key, _Record(fingerprint, expires=0.0).encode(), last=entry.revision)
