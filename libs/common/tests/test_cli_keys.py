"""`nexus keys create / list / revoke` against a real NATS server.

The CLI uses the platform's one bucket (`nexus_api_keys`), so these tests run their own server
rather than the session's shared one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.common.auth import ApiKey, KeyStore
from nexus.common.cli import main
from nexus.common.launcher import RunInfo
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer, free_port
from nexus.common.settings import NexusSettings

pytestmark = pytest.mark.integration

KEY = re.compile(r"nxk_[A-Za-z0-9]{12}_[A-Za-z0-9_-]+")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    nats = NatsServer(tmp_path_factory.mktemp("cli-nats"))
    nats.start()
    yield nats
    nats.stop()


@pytest.fixture
def nats_url(server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NEXUS_NATS_URL", server.url)
    return server.url


def _verify(url: str, raw: str) -> ApiKey:
    async def run() -> ApiKey:
        nc = await connect(NexusSettings(nats_url=url), "test")
        keys = KeyStore(nc)
        await keys.start()
        try:
            return await keys.verify(raw)
        finally:
            await keys.stop()
            await nc.close()

    return asyncio.run(run())


def test_create_list_revoke(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["keys", "create", "--name", "ci", "--scope", "anomaly:invoke", "--scope", "models:read"]
    assert main([*argv, "--rate-limit", "120"]) == 0
    out = capsys.readouterr().out
    raw = KEY.search(out)
    assert raw is not None
    assert "will not be shown again" in out
    key = _verify(nats_url, raw.group())
    assert (key.name, key.scopes, key.rate_limit_per_minute) == (
        "ci",
        frozenset({"anomaly:invoke", "models:read"}),
        120,
    )

    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines()[0].split() == ["ID", "NAME", "SCOPES", "CREATED", "REVOKED"]
    row = next(line for line in listing.splitlines() if line.startswith(key.id))
    assert row.split()[1:3] == ["ci", "anomaly:invoke,models:read"]
    assert row.split()[-1] == "no"
    assert raw.group() not in listing
    assert hashlib.sha256(raw.group().encode()).hexdigest() not in listing

    assert main(["keys", "revoke", key.id]) == 0
    assert key.id in capsys.readouterr().out
    assert main(["keys", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(key.id))
    assert row.split()[-1] == "yes"


def test_revoking_an_unknown_key_fails_clearly(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "revoke", "AAAAAAAAAAAA"]) == 1
    assert "no API key 'AAAAAAAAAAAA'" in capsys.readouterr().err


def test_bad_scopes_fail_clearly(nats_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--name", "x", "--scope", "everything"]) == 1
    assert "invalid scope" in capsys.readouterr().err


def test_nats_url_flag_wins_over_the_environment(
    server: NatsServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEXUS_NATS_URL", f"nats://127.0.0.1:{free_port()}")
    assert main(["keys", "list", "--nats-url", server.url]) == 0
    assert main(["keys", "--nats-url", server.url, "list"]) == 0
    assert capsys.readouterr().out.startswith("ID")


def test_no_nats_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEXUS_NATS_URL", f"nats://127.0.0.1:{free_port()}")
    monkeypatch.setenv("NEXUS_NATS_CONNECT_TIMEOUT_S", "0.5")
    assert main(["keys", "list"]) == 1
    assert "cannot connect to NATS" in capsys.readouterr().err


def test_keys_find_the_running_platform_by_its_run_file(
    server: NatsServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("NEXUS_NATS_URL", raising=False)
    monkeypatch.setenv("NEXUS_NATS_CONNECT_TIMEOUT_S", "0.5")
    RunInfo(os.getpid(), str(tmp_path), server.url).write()  # as `nexus up` writes it

    assert main(["keys", "--data-dir", str(tmp_path), "list"]) == 0
    monkeypatch.setenv("NEXUS_DATA_DIR", str(tmp_path))
    assert main(["keys", "list"]) == 0
    assert capsys.readouterr().out.startswith("ID")
    monkeypatch.setenv("NEXUS_NATS_URL", f"nats://127.0.0.1:{free_port()}")  # settings win
    assert main(["keys", "list"]) == 1
