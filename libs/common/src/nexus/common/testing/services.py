"""Real services for tests: on free ports, over a real NATS, stopped afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from nexus.common.server import Create, S, ServiceHost
from nexus.common.settings import NexusSettings


class StartService(Protocol):
    """Starts one replica of a service: `await start_service(create, Settings(...))`."""

    async def __call__(
        self, create: Create[S], settings: S, common: NexusSettings | None = None
    ) -> ServiceHost: ...


@contextlib.asynccontextmanager
async def running_services(default: NexusSettings) -> AsyncIterator[StartService]:
    """A factory of service replicas (SERVING when started, on a free port unless the settings
    name one); every replica it started is stopped, newest first, when the block ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            create: Create[S], settings: S, common: NexusSettings | None = None
        ) -> ServiceHost:
            host = await create(settings, common or default)
            stack.push_async_callback(host.stop)
            return host

        yield start
