"""API keys: their format, their hash, and the record stored for each.

A key is `nxk_<id>_<secret>`: `id` is 12 random letters and digits (it names the record and may
be shown), `secret` is `secrets.token_urlsafe(32)` (256 random bits). Only the SHA-256 of the
whole key is stored; see docs/adr/0006-api-keys.md for why a fast hash is right here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nexus.common.auth._scopes import scope_allows

KEY_PREFIX = "nxk_"
ID_LENGTH = 12
_ID_ALPHABET = string.ascii_letters + string.digits
_ID = re.compile(rf"[A-Za-z0-9]{{{ID_LENGTH}}}")


@dataclass(frozen=True)
class ApiKey:
    """An API key's record, without its secret or hash.

    Attributes:
        id: The public part of the key; names it in `nexus keys` and in logs.
        name: What the key is for, chosen by whoever made it.
        scopes: What it grants (`*`, `<area>:*`, `<area>:<verb>`).
        created: When it was made (UTC).
        revoked: A revoked key is refused everywhere at once.
        rate_limit_per_minute: Requests per minute the gateway allows it; 0: the default.
    """

    id: str
    name: str
    scopes: frozenset[str]
    created: datetime
    revoked: bool = False
    rate_limit_per_minute: int = 0

    def allows(self, scope: str) -> bool:
        """Whether the key's grants cover `scope` ("" needs none)."""
        return scope_allows(self.scopes, scope)


@dataclass(frozen=True)
class StoredKey:
    """What the key store keeps under the key's id: the record and the key's hash."""

    key: ApiKey
    key_hash: str = field(repr=False)

    def matches(self, raw_key: str) -> bool:
        """Whether `raw_key` is this key (compared in constant time)."""
        return hmac.compare_digest(hash_key(raw_key), self.key_hash)

    def encode(self) -> bytes:
        """The JSON value stored in the bucket."""
        k = self.key
        return json.dumps(
            {
                "id": k.id,
                "name": k.name,
                "key_hash": self.key_hash,
                "scopes": sorted(k.scopes),
                "created": k.created.isoformat(),
                "revoked": k.revoked,
                "rate_limit_per_minute": k.rate_limit_per_minute,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> StoredKey:
        """Reads a value written by `encode`."""
        raw: dict[str, Any] = json.loads(data)
        key = ApiKey(
            id=raw["id"],
            name=raw["name"],
            scopes=frozenset(raw["scopes"]),
            created=datetime.fromisoformat(raw["created"]),
            revoked=bool(raw.get("revoked", False)),
            rate_limit_per_minute=int(raw.get("rate_limit_per_minute") or 0),
        )
        return cls(key, raw["key_hash"])


def hash_key(raw_key: str) -> str:
    """SHA-256 of the whole key, hex."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh key: its id and its plaintext."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(raw_key: str) -> str | None:
    """The id part of a plaintext key, or None when it is not shaped like one."""
    if not raw_key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = raw_key[len(KEY_PREFIX) :].partition("_")
    if not sep or not secret or not is_key_id(key_id):
        return None
    return key_id


def is_key_id(key_id: str) -> bool:
    """Whether `key_id` is shaped like a key id."""
    return _ID.fullmatch(key_id) is not None


def utcnow() -> datetime:
    """Now, in UTC, to the second (what records store)."""
    return datetime.now(UTC).replace(microsecond=0)
