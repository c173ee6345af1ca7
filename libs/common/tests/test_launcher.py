"""The launcher's parts without a platform: restart policy over real processes, its files."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus.common.auth import key_id_of
from nexus.common.errors import Unavailable
from nexus.common.launcher import (
    Backoff,
    RunInfo,
    Supervised,
    Supervisor,
    describe_exit,
    remove_run_file,
    running_platform,
    save_admin_key,
    service_key,
    signing_key,
)
from nexus.common.testing.waiting import eventually


class Proc:
    """A real child process (`sleep`) that the supervisor keeps; notes each restart."""

    def __init__(self, name: str, restarts: list[str], *, fails: int = 0) -> None:
        self.name, self.restarts, self.fails = name, restarts, fails
        self.process = _spawn("sleep", "60")

    def supervised(self, *, is_nats: bool = False) -> Supervised:
        return Supervised(
            self.name,
            lambda: self.process.poll() is None,
            self.process.poll,
            self.restart,
            is_nats=is_nats,
        )

    async def restart(self) -> None:
        self.restarts.append(self.name)
        if self.fails:  # exits at once, as a child that cannot start
            self.fails -= 1
            self.process = _spawn("true", wait=True)
            raise Unavailable(f"{self.name} exited at start")
        self.process = _spawn("sleep", "60")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _spawn(*cmd: str, wait: bool = False) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(cmd)
    if wait:
        process.wait()
    return process


@contextlib.asynccontextmanager
async def supervising(*children: Supervised, backoff: Backoff) -> AsyncIterator[None]:
    task = asyncio.create_task(Supervisor(children, backoff).run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


FAST = Backoff(first_s=0.01, max_s=0.04, reset_s=60)


async def test_a_child_that_keeps_failing_waits_longer_each_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    restarts: list[str] = []
    child = Proc("svc", restarts, fails=4)
    async with supervising(child.supervised(), backoff=FAST):
        child.process.kill()
        await eventually(lambda: len(restarts) == 5 and child.process.poll() is None)
    child.stop()

    delays = [r.delay_s for r in caplog.records if hasattr(r, "delay_s")]
    assert delays == [0.01, 0.02, 0.04, 0.04, 0.04]  # doubled, then capped
    assert sum("did not restart" in r.getMessage() for r in caplog.records) == 4
    assert "svc is back" in caplog.records[-1].getMessage()


async def test_nats_is_restarted_before_the_others(caplog: pytest.LogCaptureFixture) -> None:
    restarts: list[str] = []
    nats = Proc("nats-server", restarts, fails=2)  # down a while: the service must wait
    service = Proc("svc", restarts)
    for dead in (service, nats):  # both down (reaped) before the supervisor first looks
        dead.process.kill()
        dead.process.wait()
    async with supervising(nats.supervised(is_nats=True), service.supervised(), backoff=FAST):
        await eventually(lambda: len(restarts) == 4)
    nats.stop()
    service.stop()

    assert restarts == ["nats-server"] * 3 + ["svc"]


@pytest.mark.parametrize(
    ("code", "said"),
    [(-9, "killed by SIGKILL"), (1, "exit code 1"), (0, "exit code 0"), (None, "stopped")],
)
def test_exits_are_described(code: int | None, said: str) -> None:
    assert describe_exit(code) == said


def test_secrets_are_readable_by_their_owner_alone(tmp_path: Path) -> None:
    path = save_admin_key(tmp_path / "data", "nxk_secret")
    key = signing_key(tmp_path / "data")
    orchestrator = service_key(tmp_path / "data", "orchestrator")

    assert path.read_text() == "nxk_secret\n"
    assert signing_key(tmp_path / "data") == key  # made once, then kept
    assert service_key(tmp_path / "data", "orchestrator") == orchestrator
    assert key_id_of(orchestrator) is not None  # an API key, as the key store takes it
    for secret in tmp_path.glob("data/*"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_the_run_file_names_a_live_launcher_only(tmp_path: Path) -> None:
    dead = _spawn("true", wait=True)
    RunInfo(dead.pid, str(tmp_path), "nats://127.0.0.1:4999").write()
    assert running_platform(tmp_path) is None  # a killed launcher's file is stale

    RunInfo(os.getpid(), str(tmp_path), "nats://127.0.0.1:4999").write()
    found = running_platform(tmp_path)
    assert found is not None
    assert found.nats_url == "nats://127.0.0.1:4999"
    remove_run_file(tmp_path)
    assert running_platform(tmp_path) is None


def test_a_launcher_removes_its_own_run_file_only(tmp_path: Path) -> None:
    RunInfo(1, str(tmp_path), "nats://127.0.0.1:4999").write()
    remove_run_file(tmp_path)

    assert (tmp_path / "run.json").exists()
