"""Idempotent mutating calls: a client key per call, the outcome kept for its retries.

A client sends an `Idempotency-Key` (HTTP header, forwarded by the gateway) or
`idempotency-key` (gRPC metadata) with any call that is not a read. The first call with a key
runs; a retry with the same key and request gets the first call's response or error without
running again, across every replica, even when the first caller gave up before it finished; the
same key with another request is INVALID_ARGUMENT. Every service gets this from
`ServiceHost`; see docs/adr/0019-idempotency-keys.md.
"""

from nexus.common.idempotency._calls import MAX_REMEMBERED_CALLS, new_id, ran_before, with_call
from nexus.common.idempotency._interceptor import (
    MAX_KEY_LENGTH,
    METADATA_KEY,
    IdempotencyInterceptor,
    check_idempotency_key,
    fingerprint,
    idempotency_key,
    scoped_key,
    takes_idempotency_key,
)
from nexus.common.idempotency._store import (
    BUCKET,
    KEY_FIELD,
    KEY_REUSED,
    RESPONSE_NOT_KEPT,
    IdempotencyStore,
    Outcome,
    idempotent_call,
    running_as,
)

__all__ = [
    "BUCKET",
    "KEY_FIELD",
    "KEY_REUSED",
    "MAX_KEY_LENGTH",
    "MAX_REMEMBERED_CALLS",
    "METADATA_KEY",
    "RESPONSE_NOT_KEPT",
    "IdempotencyInterceptor",
    "IdempotencyStore",
    "Outcome",
    "check_idempotency_key",
    "fingerprint",
    "idempotency_key",
    "idempotent_call",
    "new_id",
    "ran_before",
    "running_as",
    "scoped_key",
    "takes_idempotency_key",
    "with_call",
]
