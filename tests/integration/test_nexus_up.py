"""`nexus up` (what `make run` runs): it starts where the settings say, serves with the printed
key, stops in order on Ctrl-C, and fails clearly (keeping the first admin key) when it cannot
start."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nexus.common.auth import KeyStore
from nexus.common.launcher import RunInfo, installed_services, read_run_file
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer, free_port
from nexus.common.settings import NexusSettings
from nexus.common.testing.launcher import NexusUp

pytestmark = pytest.mark.integration


def test_nexus_up_serves_and_a_ctrl_c_stops_it_in_order(tmp_path: Path) -> None:
    port = free_port()
    up = NexusUp(tmp_path / "data", ["--nats-port", "0"], env={"NEXUS_GATEWAY_PORT": str(port)})
    try:
        url, key = up.wait_up(timeout_s=120)
        assert url == f"http://127.0.0.1:{port}"  # the setting, not a default, decides
        assert key is not None
        headers = {"Authorization": f"Bearer {key}"}
        points = [{"values": [i % 5 * 0.1, i % 3 * 0.1]} for i in range(40)]
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            trained = http.post(
                "/v1/anomaly/detectors/up:train",
                json={"points": points, "promote_to": "production"},
            )
            assert trained.status_code == 200, trained.text
            scored = http.post(
                "/v1/anomaly/detectors/up:score", json={"points": [{"values": [9.0, 9.0]}]}
            )
            assert scored.json()["scores"][0]["is_anomaly"] is True
            assert http.get("/readyz").status_code == 200
        code = up.interrupt()  # SIGINT to the whole process group, as the terminal sends it
    finally:
        up.kill()

    assert code == 0, up.output
    stages = re.findall(r"\d\d:\d\d:\d\d stopping (.+)", up.output)
    services = installed_services()  # every service the workspace installs, in start order
    assert stages == ["gateway", ", ".join(services), "nats-server"], up.output
    logs = {p.stem: p.read_text() for p in (tmp_path / "data" / "logs").glob("*.log")}
    assert "Traceback" not in up.output + "".join(logs.values())
    assert '"level": "ERROR"' not in "".join(logs.values())
    for name in ("gateway", *services):
        assert f"{name} stopped" in logs[name]
    assert not (tmp_path / "data" / "run.json").exists()


SCORE = """\
name: up-score
inputs:
  x: {type: number, required: true}
steps:
  - id: score
    call:
      method: nexus.anomaly.v1.AnomalyService/ScorePoints
      request: {name: up, points: [{values: ["${inputs.x}", "${inputs.x}"]}]}
outputs:
  anomalous: "${steps.score.output.scores[0].is_anomaly}"
"""


def test_a_workflow_calls_a_service_through_the_orchestrator_of_nexus_up(
    tmp_path: Path,
) -> None:
    """Auth is on: the orchestrator calls with its own key (made by `nexus up`, kept in the
    data directory), and only within the scopes of the key that registered the workflow."""
    data = tmp_path / "data"
    up = NexusUp(data, ["--nats-port", "0", "--port", "0"])
    try:
        url, admin = up.wait_up(timeout_s=120)
        info = read_run_file(data)
        assert info is not None
        narrow = asyncio.run(_make_key(info.nats_url, "orchestrator:*"))
        with httpx.Client(base_url=url, timeout=30) as http:
            as_admin = {"Authorization": f"Bearer {admin}"}
            points = [{"values": [i % 5 * 0.1, i % 3 * 0.1]} for i in range(40)]
            trained = http.post(
                "/v1/anomaly/detectors/up:train",
                json={"points": points, "promote_to": "production"},
                headers=as_admin,
            )
            assert trained.status_code == 200, trained.text
            ran = _run(http, as_admin, {"x": 9.0})
            refused = _run(http, {"Authorization": f"Bearer {narrow}"}, {"x": 9.0})
        up.interrupt()
    finally:
        up.kill()

    assert ran["state"] == "RUN_STATE_SUCCEEDED", ran
    assert ran["outputs"] == {"anomalous": True}
    assert refused["state"] == "RUN_STATE_FAILED", refused
    assert "may not call nexus.anomaly.v1.AnomalyService/ScorePoints" in str(refused), refused
    key_file = data / "orchestrator.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() not in up.output  # never printed


def _run(http: httpx.Client, headers: dict[str, str], inputs: dict[str, float]) -> dict:
    """Registers SCORE with `headers`' key, runs it, and returns the run once it ends."""
    registered = http.post(
        "/v1/orchestrator/workflows", json={"definition": SCORE}, headers=headers
    )
    assert registered.status_code == 200, registered.text
    started = http.post(
        "/v1/orchestrator/workflows/up-score:run", json={"inputs": inputs}, headers=headers
    )
    assert started.status_code == 200, started.text
    run_id = started.json()["run"]["run_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run = http.get(f"/v1/orchestrator/runs/{run_id}", headers=headers).json()["run"]
        if run["state"] not in ("RUN_STATE_PENDING", "RUN_STATE_RUNNING", "RUN_STATE_WAITING"):
            return dict(run)
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end: {run}")


async def _make_key(nats_url: str, *scopes: str) -> str:
    nc = await connect(NexusSettings(nats_url=nats_url), "test")
    keys = KeyStore(nc)
    try:
        await keys.start()
        return (await keys.create("narrow", scopes))[1]
    finally:
        await keys.stop()
        await nc.close()


@pytest.fixture
def other_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """Another platform's NATS, already on its port."""
    server = NatsServer(tmp_path / "other")
    server.start()
    yield server
    server.stop()


def test_a_taken_nats_port_is_a_clear_error_and_nothing_starts(
    tmp_path: Path, other_nats: NatsServer
) -> None:
    up = NexusUp(tmp_path / "data", ["--nats-port", str(other_nats.port), "--port", "0"])
    code = up.wait(60)

    assert code == 1
    assert f"port {other_nats.port} on 127.0.0.1 for NATS" in up.output
    assert "is taken" in up.output
    assert "Nexus is up" not in up.output
    assert not (tmp_path / "data" / "nats").exists()
    assert not (tmp_path / "data" / "run.json").exists()
    assert asyncio.run(_buckets(other_nats.url)) == []  # no admin key made in the other NATS


async def _buckets(url: str) -> list[str]:
    nc = await connect(NexusSettings(nats_url=url), "test")
    try:
        return [s.config.name for s in await nc.jetstream().streams_info()]
    finally:
        await nc.close()


def test_a_taken_gateway_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        up = NexusUp(tmp_path / "data", ["--nats-port", "0"], env={"NEXUS_GATEWAY_PORT": str(port)})
        code = up.wait(60)

    assert code == 1
    assert f"port {port} on 127.0.0.1 for the gateway (--port, NEXUS_GATEWAY_PORT)" in up.output
    assert not (tmp_path / "data" / "nats").exists()


def test_a_second_nexus_up_on_the_same_data_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    other = os.getpid()  # a live process stands for the launcher already running there
    RunInfo(other, str(data), "nats://127.0.0.1:1", "http://127.0.0.1:1").write()
    up = NexusUp(data, ["--nats-port", "0", "--port", "0"])
    code = up.wait(60)

    assert code == 1
    assert f"another nexus up (pid {other}) runs with {data}" in up.output
    assert (data / "run.json").exists()  # the running one's file stays


def test_a_first_start_that_fails_keeps_the_admin_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["--services", "anomaly", "--nats-port", "0", "--port", "0"]
    up = NexusUp(data, args, env={"NEXUS_ANOMALY_WORKERS": "0"})  # the service cannot start
    code = up.wait(120)

    assert code == 1
    assert "anomaly exited at start" in up.output
    key_file = data / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    raw = key_file.read_text().strip()
    assert f"NEXUS_API_KEY={raw}" in up.output  # printed the moment it existed
    assert asyncio.run(_verify(data / "nats", raw)) == ("admin", frozenset({"*"}))


async def _verify(store_dir: Path, raw: str) -> tuple[str, frozenset[str]]:
    server = NatsServer(store_dir)
    server.start()
    try:
        nc = await connect(NexusSettings(nats_url=server.url), "test")
        keys = KeyStore(nc)
        await keys.start()
        key = await keys.verify(raw)
        await keys.stop()
        await nc.close()
        return key.name, key.scopes
    finally:
        server.stop()
