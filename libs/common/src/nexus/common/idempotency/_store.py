"""Idempotent calls in a JetStream KV bucket: one claim per key, the outcome kept for retries.

The first call with a key claims it with KV create (only one replica's create succeeds), runs,
and replaces its claim with the outcome (compare-and-set on its own revision). A call that
finds a claim with the same fingerprint waits for the outcome; one that finds another
fingerprint is refused. A claim carries a lease that its holder renews while the work runs; a
claim whose lease ran out (its process died) is taken over by the next call, again with
compare-and-set, so only one call takes it. Once claimed, the work runs to the end and its
outcome is kept even when the caller leaves (a deadline, a dropped connection): that is what
lets a retry after a timeout get the result instead of doing the work again.

Nothing here knows gRPC: an outcome is a status code and the bytes to send back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api
from nats.js.kv import KeyValue

from nexus.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, Unavailable
from nexus.common.kv import open_key_value

log = logging.getLogger(__name__)

BUCKET = "nexus_idempotency"
KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
RESPONSE_NOT_KEPT = "IDEMPOTENT_RESPONSE_NOT_KEPT"
KEY_FIELD = "Idempotency-Key"
"""The name clients know the key by (the HTTP header; `idempotency-key` in gRPC metadata)."""

_FIRST_POLL_S = 0.05
_MAX_POLL_S = 1.0
_HEADER_ROOM = 1024
"""Bytes of a NATS message kept free for its headers and the record's own header line."""

T = TypeVar("T")

_RUNNING_CALL: ContextVar[str] = ContextVar("nexus_idempotent_call", default="")


def idempotent_call() -> str:
    """The (scoped) key of the idempotent call running in this context; "" outside one.

    A call runs again when its first run could not record its outcome: its process died, or
    NATS lost the answer. Work that makes something new (a model version) records this key with
    it, so that the run again finds what the first run made instead of making it twice.
    """
    return _RUNNING_CALL.get()


@contextlib.contextmanager
def running_as(call: str) -> Iterator[None]:
    """Runs the block as the idempotent call `call` (`idempotent_call()` returns it): work run
    again under the same key (a long-running operation's rerun after its replica died) finds
    what its first run made, as a keyed call run again does."""
    token = _RUNNING_CALL.set(call)
    try:
        yield
    finally:
        _RUNNING_CALL.reset(token)


@dataclass(frozen=True)
class Outcome:
    """What a finished call leaves for its retries.

    Attributes:
        code: 0 for success, else the status code (gRPC numbering).
        body: The serialized response, or the serialized error status.
        kept: False when the body was too large to keep: a retry learns the call completed.
    """

    code: int
    body: bytes
    kept: bool = True


Work = Callable[[], Awaitable[tuple[T, Outcome | None]]]
"""Runs the call once: its live result, and the outcome to keep (None: keep nothing, free the
key so that a retry runs again)."""


@dataclass(frozen=True)
class _Record:
    """A bucket entry: a claim (running, until `expires`) or a finished call's outcome."""

    fingerprint: str
    expires: float = 0.0
    outcome: Outcome | None = None

    def encode(self) -> bytes:
        head: dict[str, Any] = {"fp": self.fingerprint}
        if self.outcome is None:
            head["expires"] = self.expires
            return json.dumps(head).encode()
        head |= {"code": self.outcome.code, "kept": self.outcome.kept}
        return json.dumps(head).encode() + b"\n" + self.outcome.body

    @classmethod
    def decode(cls, value: bytes) -> _Record:
        head, _, body = value.partition(b"\n")
        fields = json.loads(head)
        if "code" not in fields:
            return cls(str(fields["fp"]), expires=float(fields["expires"]))
        outcome = Outcome(int(fields["code"]), body, bool(fields.get("kept", True)))
        return cls(str(fields["fp"]), outcome=outcome)


class IdempotencyStore:
    """Runs each keyed call once across every replica that shares the bucket.

    Args:
        nc: The NATS connection.
        ttl_s: How long an outcome is kept (the bucket's TTL).
        lease_s: How long a claim outlives its holder's last renewal.
        bucket: The bucket's name; tests pass their own.
    """

    def __init__(self, nc: Client, *, ttl_s: float, lease_s: float, bucket: str = BUCKET) -> None:
        self._nc = nc
        self._ttl_s = ttl_s
        self._lease_s = lease_s
        self._bucket = bucket
        self._kv: KeyValue | None = None
        self._running: set[asyncio.Task[Any]] = set()

    @property
    def kv(self) -> KeyValue:
        """The bucket (after `start`)."""
        if self._kv is None:
            raise RuntimeError("IdempotencyStore.start() first")
        return self._kv

    async def start(self) -> None:
        """Creates or binds the bucket."""
        config = api.KeyValueConfig(
            bucket=self._bucket,
            description="Nexus idempotency keys: claims and outcomes of mutating calls",
            history=1,
            ttl=self._ttl_s,
        )
        self._kv = await open_key_value(self._nc.jetstream(), config)

    async def stop(self, grace_s: float) -> None:
        """Lets claimed work finish for up to `grace_s`, then cancels it (freeing its keys)."""
        running = set(self._running)
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def run(self, key: str, fingerprint: str, work: Work[T]) -> T | Outcome:
        """Runs `work` once for `key`, or gives the outcome of the call that did.

        Args:
            key: The bucket key (already scoped to the caller).
            fingerprint: What the call asked for; a retry must ask for the same.
            work: The call itself.

        Returns:
            The live result when this call ran the work, else the kept outcome.

        Raises:
            InvalidArgument: The key was used for another request.
            Unavailable: The bucket cannot be reached: the work is not run.
        """
        try:
            claimed = await self._claim_or_wait(key, fingerprint)
        except (nats.errors.Error, TimeoutError) as err:
            raise Unavailable(f"cannot record the {KEY_FIELD} now; retry") from err
        if isinstance(claimed, Outcome):
            return claimed
        task = asyncio.create_task(self._execute(key, fingerprint, claimed, work))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        # Shielded: the caller may leave (its deadline), the work and its record go on.
        return await asyncio.shield(task)

    async def _claim_or_wait(self, key: str, fingerprint: str) -> int | Outcome:
        """Claims the key (returns the claim's revision) or waits for the outcome."""
        revision, free, poll_s = 0, True, _FIRST_POLL_S  # first, as if the key were new
        while True:
            if free:
                claimed = await self._replace(key, self._claim(fingerprint), revision)
                if claimed is not None:
                    return claimed
            revision, record = await self._latest(key)
            if record is not None:
                if record.fingerprint != fingerprint:
                    raise _reused()
                if record.outcome is not None:
                    return record.outcome
            free = record is None or record.expires < time.time()
            if record is not None and free:
                log.warning("an idempotency claim expired (its holder died?); taking it over")
            if not free:
                await asyncio.sleep(poll_s)
                poll_s = min(poll_s * 2, _MAX_POLL_S)

    async def _execute(self, key: str, fingerprint: str, revision: int, work: Work[T]) -> T:
        claim = _Claim(key, fingerprint, revision)
        renewer = asyncio.create_task(self._renew(claim))
        _RUNNING_CALL.set(key)  # this task's own context: the work sees it, the caller does not
        try:
            result, outcome = await work()
        except BaseException:
            await self._settle(claim, renewer, None)
            raise
        await self._settle(claim, renewer, self._fitting(outcome))
        return result

    async def _renew(self, claim: _Claim) -> None:
        """Renews the claim's lease until the call settles, or until the claim was lost."""
        while (revision := claim.revision) is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(claim.settling.wait(), self._lease_s / 3)
                return
            try:
                value = self._claim(claim.fingerprint)
                claim.revision = await self._replace(claim.key, value, revision)
            except (nats.errors.Error, TimeoutError) as err:  # again at the next renewal
                log.warning("cannot renew an idempotency claim: %r", err)
        log.error("an idempotency claim expired while its call ran; another call took it")

    async def _settle(
        self, claim: _Claim, renewer: asyncio.Task[None], outcome: Outcome | None
    ) -> None:
        """Stops renewing; keeps `outcome` in place of the claim, or frees the key (None)."""
        claim.settling.set()
        await asyncio.shield(renewer)
        if claim.revision is None:
            return  # lost: the call that took the claim records its own outcome
        try:
            if outcome is None:
                await self._free(claim.key, claim.revision)
            else:
                value = _Record(claim.fingerprint, outcome=outcome).encode()
                if await self._replace(claim.key, value, claim.revision) is None:
                    log.error("an idempotency claim was taken over before its call finished")
        except (nats.errors.Error, TimeoutError) as err:
            # The claim expires by itself; a retry then runs the call again.
            log.error("cannot record the outcome of an idempotent call: %r", err)

    def _fitting(self, outcome: Outcome | None) -> Outcome | None:
        """The outcome, without its body when the body would not fit in a NATS message."""
        if outcome is None or len(outcome.body) + _HEADER_ROOM <= self._nc.max_payload:
            return outcome
        return Outcome(outcome.code, b"", kept=False)

    def _claim(self, fingerprint: str) -> bytes:
        return _Record(fingerprint, expires=time.time() + self._lease_s).encode()

    async def _replace(self, key: str, value: bytes, revision: int) -> int | None:
        """Writes `value` if the key is still at `revision` (0: holds nothing yet); None when
        it moved on."""
        try:
            return await self.kv.update(key, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def _free(self, key: str, revision: int) -> None:
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await self.kv.delete(key, last=revision)

    async def _latest(self, key: str) -> tuple[int, _Record | None]:
        """The key's revision (0: never written) and record (None: none, freed or unreadable)."""
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError as err:  # never written, or deleted
            deleted: KeyValue.Entry | None = err.entry
            return (deleted.revision or 0) if deleted is not None else 0, None
        return entry.revision or 0, _decode(entry.value)


@dataclass
class _Claim:
    """A claim this process holds: its key, and its revision while it still holds it."""

    key: str
    fingerprint: str
    revision: int | None
    settling: asyncio.Event = field(default_factory=asyncio.Event)


def _decode(value: bytes | None) -> _Record | None:
    """The record, or None for one that cannot be read (taken over like an expired claim)."""
    try:
        return _Record.decode(value or b"")
    except (ValueError, KeyError, TypeError):
        return None


def _reused() -> InvalidArgument:
    description = "was already used for a different request; send a new key for a new request"
    return InvalidArgument(
        f"{KEY_FIELD} {description}",
        reason=KEY_REUSED,
        violations=[FieldViolation(KEY_FIELD, description)],
    )


def not_kept() -> FailedPrecondition:
    """The error a retry gets when the first call's response was too large to keep."""
    return FailedPrecondition(
        f"the call with this {KEY_FIELD} already completed, but its response was too large to "
        "keep for retries; read the result back, or send a new key to run the call again",
        reason=RESPONSE_NOT_KEPT,
    )
