"""`nexus up` supervises itself: a child killed with SIGKILL (NATS, a service, the gateway) is
restarted on its port, `/readyz` says not ready meanwhile and requests fail at once with 503, and
nothing stored is lost.

One platform (NATS, the anomaly service, the gateway) serves the module; each test leaves it
ready again.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from nexus.common.testing.launcher import NexusUp
from nexus.common.testing.waiting import until

POINTS = [{"values": [i % 5 * 0.1, i % 3 * 0.1]} for i in range(40)]
SPIKE = {"points": [{"values": [9.0, 9.0]}]}
FAST_S = 2.0
"""A request while a part is down must be answered (503) within this: never the 5 s NATS wait."""


@dataclass
class Running:
    """The platform under test and a client with a key made through `nexus keys`."""

    up: NexusUp
    http: httpx.Client
    admin: str


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("supervised") / "data"
    up = NexusUp(data_dir, ["--services", "anomaly", "--nats-port", "0", "--port", "0"])
    try:
        url, admin = up.wait_up()
        assert admin is not None
        with httpx.Client(base_url=url, timeout=30) as http:
            yield Running(up, http, admin)
        assert up.interrupt() == 0, up.output
    finally:
        up.kill()


@pytest.fixture(scope="module")
def app_key(running: Running) -> str:
    """A key stored in NATS by `nexus keys`, which finds the platform's NATS by its run file."""
    return running.up.create_key("app", "anomaly:*", "models:read")


@pytest.fixture(scope="module")
def trained(running: Running, app_key: str) -> str:
    """A detector trained and promoted before any fault; its name."""
    reply = running.http.post(
        "/v1/anomaly/detectors/kept:train",
        json={"points": POINTS, "promote_to": "production"},
        headers=_auth(app_key),
    )
    assert reply.status_code == 200, reply.text
    return "kept"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _readyz(running: Running) -> int:
    return running.http.get("/readyz", timeout=FAST_S).status_code


def _kill(running: Running, child: str) -> dict[str, int]:
    """SIGKILLs a child; returns every child's pid from before."""
    before = {name: c["pid"] for name, c in running.up.run_info().children.items()}
    os.kill(before[child], signal.SIGKILL)
    return before


def _outage(running: Running, key: str) -> httpx.Response:
    """Waits for /readyz to say not ready; returns a request's answer meanwhile."""
    until(lambda: _readyz(running) == 503, timeout_s=5)
    return running.http.post(
        "/v1/anomaly/detectors/kept:score", json=SPIKE, headers=_auth(key), timeout=FAST_S
    )


def _recovered(running: Running, key: str, model: str) -> None:
    """Ready again, the key and the model still there, a request served."""
    until(lambda: _readyz(running) == 200, timeout_s=60)
    listed = running.http.get(f"/v1/anomaly/models/{model}", headers=_auth(key))
    scored = running.http.post(
        f"/v1/anomaly/detectors/{model}:score", json=SPIKE, headers=_auth(key)
    )
    assert listed.status_code == 200, listed.text
    assert [v["version"] for v in listed.json()["model"]["versions"]] == ["1"]
    assert scored.status_code == 200, scored.text
    assert scored.json()["scores"][0]["is_anomaly"] is True


def _pids(running: Running) -> dict[str, int]:
    return {name: c["pid"] for name, c in running.up.run_info().children.items()}


def _restarted_alone(running: Running, child: str, before: dict[str, int]) -> None:
    """The launcher said it restarted `child`, which has a new process; the rest kept theirs
    (after NATS, the services and the gateway reconnected rather than restarted)."""
    running.up.wait_for(rf"{child} exited \(killed by SIGKILL\); restarting in", 5)
    running.up.wait_for(rf"{child} is back", 60)
    after = _pids(running)
    assert after.pop(child) != before.pop(child)
    assert after == before


@pytest.mark.parametrize("child", ["nats-server", "anomaly"])
def test_a_killed_child_is_restarted_and_nothing_is_lost(
    running: Running, app_key: str, trained: str, child: str
) -> None:
    before = _kill(running, child)
    during = _outage(running, app_key)
    _recovered(running, app_key, trained)

    assert during.status_code == 503
    assert during.json()["error"]["status"] == "UNAVAILABLE"
    _restarted_alone(running, child, before)


def test_the_gateway_killed_is_restarted_on_its_port(
    running: Running, app_key: str, trained: str
) -> None:
    before = _kill(running, "gateway")
    _restarted_alone(running, "gateway", before)
    _recovered(running, app_key, trained)
