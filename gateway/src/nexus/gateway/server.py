"""Running the app under uvicorn: on a free port for tests, until SIGTERM for `python -m`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from nexus.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling.

    uvicorn re-raises a captured SIGTERM once it has stopped, which would kill the process
    before it closed its key store and NATS connection; `GatewayServer` handles signals instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class GatewayServer:
    """uvicorn serving the gateway app.

    On `stop` (and SIGTERM or SIGINT once `handle_signals` was called) it stops accepting, lets
    in-flight requests finish within `shutdown_grace_s` (then cancels them, which cancels their
    gRPC calls), and runs the app's shutdown, which closes the backend channels.

    Args:
        app: The ASGI app (`build_app`).
        settings: Host, port and grace period.
    """

    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            lifespan="on",
            log_config=None,  # logging is set up once, by the process
            access_log=False,  # the request spans record what an access log would
            timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL, once started: "http://127.0.0.1:8080"."""
        host = self._server.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> str:
        """Starts serving in a background task; returns the URL once it listens.

        Raises:
            RuntimeError: When the server could not start (the port is taken).
        """
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                raise RuntimeError("the gateway could not start; see the log")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self.url

    def handle_signals(self) -> None:
        """SIGTERM or SIGINT: graceful stop; a second one: stop at once."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._server.should_exit:
            self._server.force_exit = True
        log.info("%s: stopping the gateway", sig.name)
        self._server.should_exit = True

    async def wait(self) -> None:
        """Blocks until the server stopped (after a signal or `stop`)."""
        if self._task is not None:
            with contextlib.suppress(SystemExit):  # uvicorn exits this way when it cannot bind
                await self._task

    async def stop(self) -> None:
        """Graceful stop, as on SIGTERM."""
        self._server.should_exit = True
        await self.wait()
