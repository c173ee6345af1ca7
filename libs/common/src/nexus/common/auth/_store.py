"""The API-key store: hashed records in a JetStream KV bucket, cached, revoked everywhere at once.

Every process that checks keys holds a `KeyStore`. Records are cached for a few seconds; a
follower of the bucket (resuming after a NATS restart) drops a record from every process's
cache as soon as it changes, so a revocation takes effect at once and the cache TTL only bounds
staleness if the follower lags.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api
from nats.js.kv import KeyValue

from nexus.common.auth._keys import (
    KEY_PREFIX,
    ApiKey,
    StoredKey,
    hash_key,
    is_key_id,
    key_id_of,
    new_key,
    utcnow,
)
from nexus.common.auth._scopes import validate_scopes
from nexus.common.caching import TTLCache
from nexus.common.errors import (
    Aborted,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from nexus.common.kv import KvEntry, KvFollower, open_key_value
from nexus.common.nats import close, connect
from nexus.common.settings import NexusSettings

log = logging.getLogger(__name__)

BUCKET = "nexus_api_keys"
BOOTSTRAP_MARKER = "_bootstrap"
"""Created (once, with KV create) by the first `ensure_admin`; never shaped like a key id."""

_CAS_ATTEMPTS = 5


class KeyStore:
    """API keys in the JetStream KV bucket `nexus_api_keys` (key: the key's id).

    Args:
        nc: A connected client.
        cache_ttl_s: Seconds a record stays cached (the follower usually drops it sooner).
        bucket: The bucket's name; tests pass their own.
    """

    def __init__(self, nc: Client, *, cache_ttl_s: float = 5.0, bucket: str = BUCKET) -> None:
        self._nc = nc
        self._bucket = bucket
        self._kv: KeyValue | None = None
        self._cache: TTLCache[str, StoredKey | None] = TTLCache(
            "api_keys", maxsize=10_000, ttl_s=cache_ttl_s
        )
        self._follower = KvFollower(nc, bucket, self._forget)

    @property
    def kv(self) -> KeyValue:
        """The bucket (after `start`)."""
        if self._kv is None:
            raise RuntimeError("KeyStore.start() first")
        return self._kv

    @property
    def connected(self) -> bool:
        """Whether the store's NATS connection is up now (keys cannot be checked without it)."""
        return bool(self._nc.is_connected)

    async def start(self) -> None:
        """Creates or binds the bucket and starts following it for changes."""
        config = api.KeyValueConfig(
            bucket=self._bucket, description="Nexus API keys (hashed)", history=1
        )
        self._kv = await open_key_value(self._nc.jetstream(), config)
        await self._follower.start()

    async def _forget(self, entry: KvEntry) -> None:
        self._cache.delete(entry.key)

    async def stop(self) -> None:
        """Stops following the bucket."""
        await self._follower.stop()

    async def create(
        self, name: str, scopes: Iterable[str], *, rate_limit_per_minute: int = 0
    ) -> tuple[ApiKey, str]:
        """Makes a key.

        Returns:
            The record and the plaintext key. The plaintext is not stored: this is the only
            time anyone sees it.

        Raises:
            InvalidArgument: An empty name, a malformed scope, a negative rate limit.
        """
        grants = [scopes] if isinstance(scopes, str) else [*scopes]
        _check_new_key(name, grants, rate_limit_per_minute)
        key_id, raw = new_key()
        key = ApiKey(
            id=key_id,
            name=name.strip(),
            scopes=frozenset(grants),
            created=utcnow(),
            rate_limit_per_minute=rate_limit_per_minute,
        )
        stored = StoredKey(key, hash_key(raw))
        await self.kv.create(key_id, stored.encode())
        log.info("API key created", extra={"key_id": key_id, "key_name": key.name})
        return key, raw

    async def list(self) -> builtins.list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        try:
            ids = [k for k in await self.kv.keys() if is_key_id(k)]
        except nats.js.errors.NoKeysError:
            return []
        stored = await asyncio.gather(*(self._read(k) for k in ids))
        return sorted((s.key for s in stored if s is not None), key=lambda k: (k.created, k.id))

    async def get(self, key_id: str) -> ApiKey:
        """One key's record.

        Raises:
            NotFound: No key has that id.
        """
        return (await self._entry(key_id))[0].key

    async def revoke(self, key_id: str) -> ApiKey:
        """Revokes a key in every process at once; revoking twice is harmless.

        Raises:
            NotFound: No key has that id.
        """
        for _ in range(_CAS_ATTEMPTS):
            stored, revision = await self._entry(key_id)
            if stored.key.revoked:
                return stored.key
            revoked = StoredKey(replace(stored.key, revoked=True), stored.key_hash)
            try:
                await self.kv.update(key_id, revoked.encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # changed meanwhile: read it again
            self._cache.delete(key_id)
            log.info("API key revoked", extra={"key_id": key_id})
            return revoked.key
        raise Aborted(f"API key {key_id} keeps changing; try again")

    async def verify(self, raw_key: str | None) -> ApiKey:
        """The record of a valid, unrevoked key.

        Raises:
            Unauthenticated: No key, a key that is not valid, a revoked key.
            Unavailable: The key store cannot be reached. Also while NATS is down, at once, for a
                cached key too: a revocation made meanwhile could not reach this process.
        """
        if not raw_key:
            raise Unauthenticated("missing API key")
        key_id = key_id_of(raw_key)
        if key_id is None:
            raise Unauthenticated("invalid API key")
        if not self.connected:
            raise Unavailable("API key store unavailable: NATS is not connected")
        stored = await self._cache.get_or_load(key_id, lambda: self._read(key_id))
        if stored is None or not stored.matches(raw_key):
            raise Unauthenticated("invalid API key")
        if stored.key.revoked:
            raise Unauthenticated("API key revoked")
        return stored.key

    async def authorize(self, raw_key: str | None, scope: str) -> ApiKey:
        """`verify`, then checks that the key grants `scope` ("" needs no scope).

        Raises:
            Unauthenticated: As `verify`.
            PermissionDenied: The key lacks the scope.
        """
        key = await self.verify(raw_key)
        if not key.allows(scope):
            raise PermissionDenied(f"API key lacks scope {scope}")
        return key

    async def ensure_admin(self) -> str | None:
        """On a platform's first start, makes an "admin" key with scope `*`.

        Safe when several processes start at once: only the one that creates the bootstrap
        marker (KV create fails if it exists) makes the key.

        Returns:
            The admin key's plaintext, or None when keys existed or another process made it.
        """
        if await self.list():
            return None
        marker = json.dumps({"created": utcnow().isoformat()}).encode()
        try:
            await self.kv.create(BOOTSTRAP_MARKER, marker)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        _, raw = await self.create("admin", ["*"])
        return raw

    async def ensure_key(self, raw_key: str, name: str, scopes: Iterable[str]) -> bool:
        """Stores a key made elsewhere (a deployment's bootstrap admin key, from a Secret) when
        no key has its id yet; what is stored stays as it is (revoked, if it was revoked).

        Safe when several processes start at once (KV create): one stores it, the others find it.

        Returns:
            Whether this call stored it.

        Raises:
            InvalidArgument: A key not shaped like `nxk_<id>_<secret>`, a malformed scope.
            AlreadyExists: A different key with the same id is stored.
        """
        key_id = key_id_of(raw_key)
        if key_id is None:
            raise InvalidArgument(f"not an API key: it must look like {KEY_PREFIX}<id>_<secret>")
        grants = [*scopes]
        _check_new_key(name, grants, 0)
        key = ApiKey(id=key_id, name=name.strip(), scopes=frozenset(grants), created=utcnow())
        try:
            await self.kv.create(key_id, StoredKey(key, hash_key(raw_key)).encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            stored = await self._read(key_id)
            if stored is not None and not stored.matches(raw_key):
                raise AlreadyExists(f"another API key with id {key_id} is stored") from None
            return False
        log.info("API key stored", extra={"key_id": key_id, "key_name": key.name})
        return True

    async def _entry(self, key_id: str) -> tuple[StoredKey, int]:
        if not is_key_id(key_id):
            raise NotFound(f"no API key {key_id!r}")
        try:
            entry = await self.kv.get(key_id)
        except nats.js.errors.KeyNotFoundError:
            raise NotFound(f"no API key {key_id!r}") from None
        except nats.errors.Error as err:
            raise Unavailable("API key store unavailable") from err
        if entry.value is None or entry.revision is None:
            raise NotFound(f"no API key {key_id!r}")
        return StoredKey.decode(entry.value), entry.revision

    async def _read(self, key_id: str) -> StoredKey | None:
        """The stored key, or None when there is none."""
        try:
            return (await self._entry(key_id))[0]
        except NotFound:
            return None


def _check_new_key(name: str, scopes: list[str], rate_limit_per_minute: int) -> None:
    if not name.strip():
        raise InvalidArgument.for_field("name", "a key needs a name")
    if rate_limit_per_minute < 0:
        raise InvalidArgument.for_field("rate_limit_per_minute", "must be 0 (default) or more")
    validate_scopes(scopes)


@contextlib.asynccontextmanager
async def open_key_store(settings: NexusSettings, client_name: str) -> AsyncIterator[KeyStore]:
    """A started key store on its own NATS connection, closed (both) on exit.

    For processes that need keys but no other NATS work: the gateway, the CLI, `nexus up`.
    """
    nc = await connect(settings, client_name)
    keys = KeyStore(nc)
    try:
        await keys.start()
        yield keys
    finally:
        await keys.stop()
        await close(nc)
