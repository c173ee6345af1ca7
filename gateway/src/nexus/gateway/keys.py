"""API keys at the edge: where a caller's key comes from, and what the gateway needs of the store.

The store is `nexus.common.auth.KeyStore`; the gateway depends only on the small protocol below,
so tests and deployments without auth need not build one.
"""

from __future__ import annotations

from typing import Protocol

from starlette.datastructures import Headers


class ApiKeyLike(Protocol):
    """What the gateway reads of an authorized key."""

    @property
    def id(self) -> str:
        """Stable key id (never the secret): the rate limiter's bucket key."""
        ...

    @property
    def rate_limit_per_minute(self) -> int:
        """The key's own rate; 0 for the gateway's default."""
        ...


class Authorizer(Protocol):
    """Checks a raw key against a scope (`nexus.common.auth.KeyStore` is one)."""

    @property
    def connected(self) -> bool:
        """Whether keys can be checked now (the store's NATS connection is up): `/readyz`."""
        ...

    async def authorize(self, raw_key: str | None, scope: str) -> ApiKeyLike:
        """The key, when it is valid and holds `scope`.

        Raises:
            nexus.common.errors.Unauthenticated: No key, or not a valid one.
            nexus.common.errors.PermissionDenied: A valid key without the scope.
        """
        ...


def raw_key(headers: Headers) -> str | None:
    """The caller's key from `Authorization: Bearer <key>`, else from `X-API-Key`."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None
