"""python -m nexus.gateway: load settings, connect the key store (auth on), serve until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from nexus.common.auth import KeyStore, open_key_store
from nexus.common.settings import NexusSettings
from nexus.common.telemetry import setup_logging, setup_tracing
from nexus.gateway.app import build_app
from nexus.gateway.server import GatewayServer
from nexus.gateway.settings import GatewaySettings

log = logging.getLogger("nexus.gateway")

SERVICE_NAME = "gateway"


async def serve(settings: GatewaySettings, common: NexusSettings) -> None:
    """Runs the gateway until SIGTERM or SIGINT, then stops gracefully.

    On a signal the server stops accepting, lets in-flight requests finish within
    `shutdown_grace_s`, then the app's shutdown closes the backend channels; the key store and
    the NATS connection close last.
    """
    async with key_store(common, settings) as keys:
        server = GatewayServer(build_app(settings, keys=keys), settings)
        url = await server.start()
        server.handle_signals()
        log.info("gateway listening on %s (backends: %s)", url, ", ".join(settings.backends))
        await server.wait()
    log.info("gateway stopped")


@contextlib.asynccontextmanager
async def key_store(
    common: NexusSettings, settings: GatewaySettings
) -> AsyncIterator[KeyStore | None]:
    """The API-key store over NATS while auth is on (with the bootstrap admin key stored); None
    when it is off."""
    if not common.auth_enabled:
        log.warning("auth is off: the gateway accepts every caller")
        yield None
        return
    async with open_key_store(common, SERVICE_NAME) as keys:
        if bootstrap := settings.bootstrap_admin_key.get_secret_value():
            stored = await keys.ensure_key(bootstrap, "admin", ["*"])
            log.info("bootstrap admin key %s", "stored" if stored else "already stored")
        yield keys


def main() -> None:
    """Entry point (`nexus.services: gateway`)."""
    common = NexusSettings()
    setup_logging(common, SERVICE_NAME)
    setup_tracing(SERVICE_NAME, common)
    asyncio.run(serve(GatewaySettings(), common))


if __name__ == "__main__":
    main()
