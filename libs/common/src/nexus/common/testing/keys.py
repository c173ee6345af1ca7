"""Real API keys for tests."""

from __future__ import annotations

import uuid

from nexus.common.auth import open_key_store
from nexus.common.settings import NexusSettings


async def make_key(settings: NexusSettings, *scopes: str, rate_limit_per_minute: int = 0) -> str:
    """Creates a real API key with the given scopes in the platform's key store; returns its
    plaintext."""
    async with open_key_store(settings, "test-keys") as store:
        _, secret = await store.create(
            f"test-{uuid.uuid4().hex[:6]}", scopes, rate_limit_per_minute=rate_limit_per_minute
        )
    return secret
