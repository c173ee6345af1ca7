"""`nexus up` as a test runs it: a real subprocess, in a session of its own as a terminal would
start it, its output collected while it runs. And its `Platform` as tests that kill its children
start it (`started_platforms`): NATS and services as child processes, on free ports."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Protocol

from nexus.common.launcher import Platform, RunInfo, read_run_file, running_platform

NEXUS = Path(sys.executable).parent / "nexus"


class NexusUp:
    """One `nexus up` process.

    Args:
        data_dir: Its data directory.
        args: Further flags (`--services anomaly`, `--port 0`, ...).
        env: Extra environment.
    """

    def __init__(
        self, data_dir: Path, args: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        cmd = [str(NEXUS), "up", "--data-dir", str(data_dir), *args]
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=data_dir.parent,
            start_new_session=True,  # its own process group, as the terminal's foreground one
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        """Everything it printed so far."""
        return "".join(self._lines)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first match of `pattern` in the output, once printed.

        Raises:
            AssertionError: It exited, or printed no match in time.
        """
        deadline = time.monotonic() + timeout_s
        while (found := re.search(pattern, self.output)) is None:
            assert self.process.poll() is None or self._reader.is_alive(), (
                f"nexus up exited ({self.process.returncode}) before {pattern!r}:\n{self.output}"
            )
            assert time.monotonic() < deadline, f"no {pattern!r} in time:\n{self.output}"
            time.sleep(0.05)
        return found

    def wait_up(self, timeout_s: float = 120.0) -> tuple[str, str | None]:
        """Waits until it says it is up; returns the gateway URL and the admin key (if printed)."""
        self.wait_for(r"Press Ctrl-C", timeout_s)
        url = self.wait_for(r"Gateway: (http://\S+)", 0).group(1)
        key = re.search(r"NEXUS_API_KEY=(\S+)", self.output)
        return url, key.group(1) if key else None

    def run_info(self) -> RunInfo:
        """Its run file: where each child runs now."""
        info = running_platform(self.data_dir)
        assert info is not None, f"no run file in {self.data_dir}"
        return info

    def pid_of(self, child: str) -> int:
        """The process id of a child ("nats-server", "anomaly", "gateway") now."""
        return self.run_info().children[child]["pid"]

    def create_key(self, name: str, *scopes: str, rate_limit_per_minute: int = 0) -> str:
        """A key made with `nexus keys create`, which finds this platform's NATS by its run file
        (NEXUS_NATS_URL, which would win, is left out); its plaintext."""
        command = [str(NEXUS), "keys", "--data-dir", str(self.data_dir), "create"]
        flags = [f"--name={name}", f"--rate-limit={rate_limit_per_minute}"]
        made = subprocess.run(
            [*command, *flags, *(f"--scope={scope}" for scope in scopes)],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "NEXUS_NATS_URL"},
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        return next(word for word in made.stdout.split() if word.startswith("nxk_"))

    def wait(self, timeout_s: float) -> int:
        """Its exit code, once it exited (with every line it printed read)."""
        code = self.process.wait(timeout_s)
        self._reader.join(timeout_s)
        return code

    def interrupt(self, timeout_s: float = 60.0) -> int:
        """Ctrl-C: SIGINT to its process group, as a terminal sends it; its exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.wait(timeout_s)

    def kill(self) -> None:
        """Kills it and every child it left (cleanup after a failed test)."""
        info = read_run_file(self.data_dir)
        if self.process.poll() is None:
            self.process.kill()
        for child in info.children.values() if info else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child["pid"], signal.SIGKILL)
        self.process.wait()


class StartPlatform(Protocol):
    """Starts a test's platform: `await start_platform("anomaly", NEXUS_X="2")`."""

    async def __call__(self, *services: str, **env: str) -> Platform: ...


@contextlib.asynccontextmanager
async def started_platforms(
    data_dir: Path, setenv: Callable[[str, str], None]
) -> AsyncIterator[StartPlatform]:
    """A starter of one `Platform` in `data_dir`: NATS on a free port, then `services` (each a
    child process, SERVING when it returns; none: NATS alone), auth off and `env` set with
    `setenv` (a test's `monkeypatch.setenv`: the children inherit this process's environment).
    The test may kill, restart or add children; whatever runs is stopped when the block ends."""
    platform = Platform(data_dir, nats_port=0, gateway_port=0, services=[])

    async def start(*services: str, **env: str) -> Platform:
        assert platform.nats is None, "one platform per block"
        for name, value in {"NEXUS_AUTH_ENABLED": "false", **env}.items():
            setenv(name, value)
        platform.services = list(services)
        await platform.start_nats()
        if services:
            await platform.start_services()
        return platform

    try:
        yield start
    finally:
        platform.stop()
