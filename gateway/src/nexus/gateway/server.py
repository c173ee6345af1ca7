"""Running the app under uvicorn: on a free port for tests, until SIGTERM for `python -m`."""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import signal
from collections.abc import Iterator
from urllib.parse import unquote

import grpc
import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from nexus.gateway.errors import GatewayError, uri_too_long
from nexus.gateway.openai.surface import surface_error
from nexus.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
LINGER_S = 2.0
"""How long a refused connection reads (and drops) what the client still sends before closing:
closing with unread data would reset the connection, and the client would lose the answer."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling.

    uvicorn re-raises a captured SIGTERM once it has stopped, which would kill the process
    before it closed its key store and NATS connection; `GatewayServer` handles signals instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering a request head beyond h11's buffer with the one error
    body (414 when the request line alone is too long, 431 for the headers, 400 for a malformed
    head; in OpenAI's error body on the OpenAI surface's paths) and closing gently, where uvicorn
    would answer 400 in plain text and close at once, which resets the connection of a client
    still sending."""

    url_limit = 0
    """The gateway's URL limit (`max_url_bytes`), named in the error."""
    _lingering = False

    def data_received(self, data: bytes) -> None:
        if not self._lingering:
            super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        received, _ = self.conn.trailing_data
        error = surface_error(_target_path(received), self._head_error(received))
        body = error.to_json().encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=error.status, headers=headers, reason=_phrase(error.status)),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self._linger()

    def _head_error(self, received: bytes) -> GatewayError:
        limit = self.config.h11_max_incomplete_event_size or 0  # GatewayServer sets it
        if len(received) <= limit:
            return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "malformed HTTP request")
        if b"\n" not in received:
            return uri_too_long(self.url_limit)
        return GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request headers are larger than the limit of {limit} bytes",
            reason=HEADERS_TOO_LARGE,
            status=431,
        )

    def _linger(self) -> None:
        """Half-closes, drops what still arrives, and closes when the client does (or after
        `LINGER_S`)."""
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def _target_path(head: bytes) -> str:
    """The path of a request head's target, as far as it arrived ("" when there is none)."""
    line = head.split(b"\n", 1)[0]
    parts = line.split(b" ", 2)
    target = parts[1] if len(parts) > 1 else b""
    return unquote(target.split(b"?", 1)[0].decode("latin-1"))


def _protocol(settings: GatewaySettings) -> type[_Protocol]:
    return type("GatewayProtocol", (_Protocol,), {"url_limit": settings.max_url_bytes})


def _phrase(status: int) -> bytes:
    return http.HTTPStatus(status).phrase.encode()


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
            http=_protocol(settings),
            h11_max_incomplete_event_size=settings.max_head_bytes,
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
