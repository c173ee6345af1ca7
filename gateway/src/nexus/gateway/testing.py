"""A real gateway for tests: real key store, real auth, in front of real backends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from nexus.common.auth import open_key_store
from nexus.common.settings import NexusSettings
from nexus.gateway.app import build_app
from nexus.gateway.server import GatewayServer
from nexus.gateway.settings import GatewaySettings


@contextlib.asynccontextmanager
async def running_gateway(
    common: NexusSettings, backends: Mapping[str, str], **overrides: Any
) -> AsyncIterator[str]:
    """A real gateway (real key store, real auth) in front of `backends` (name -> host:port);
    yields its base URL. Rate limits are off unless `overrides` set them."""
    overrides.setdefault("rate_limit_per_minute", 0)
    settings = GatewaySettings(port=0, backends=dict(backends), **overrides)
    async with open_key_store(common, "test-gateway") as keys:
        server = GatewayServer(build_app(settings, keys=keys), settings)
        url = await server.start()
        try:
            yield url
        finally:
            await server.stop()
