"""What the key that registered a workflow may still do: checked before each call step and
each time a trigger fires, so that revoking or narrowing the key takes effect at once."""

from __future__ import annotations

from nexus.common.auth import KeyStore
from nexus.common.errors import NotFound


async def owner_allows(keys: KeyStore | None, key_id: str, scope: str) -> bool:
    """Whether the key `key_id` exists, is not revoked and grants `scope` ("" : any valid key).

    Always true when auth is off (`keys` is None).

    Raises:
        Unavailable: The key store does not answer.
    """
    if keys is None:
        return True
    try:
        owner = await keys.get(key_id) if key_id else None
    except NotFound:
        owner = None
    return owner is not None and not owner.revoked and owner.allows(scope)
