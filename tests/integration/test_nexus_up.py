"""`nexus up` (what `make run` runs): it starts, serves with the printed key, stops clean."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

NEXUS = Path(sys.executable).parent / "nexus"


def read_until(process: subprocess.Popen[str], pattern: str, timeout_s: float) -> list[str]:
    """Lines printed until one matches `pattern` (fails on exit or timeout)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            pytest.fail("nexus up exited early:\n" + "".join(lines))
        lines.append(line)
        if re.search(pattern, line):
            return lines
    pytest.fail("nexus up did not get there in time:\n" + "".join(lines))


def test_nexus_up_serves_and_stops_cleanly(tmp_path: Path) -> None:
    cmd = [str(NEXUS), "up", "--data-dir", str(tmp_path), "--nats-port", "0", "--port", "0"]
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )
    try:
        output = "".join(read_until(process, r"Press Ctrl-C", timeout_s=90))
        url = re.search(r"Gateway: (http://\S+)", output)
        key = re.search(r"NEXUS_API_KEY=(\S+)", output)
        assert url, output
        assert key, output
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        points = [{"values": [i % 5 * 0.1, i % 3 * 0.1]} for i in range(40)]
        with httpx.Client(base_url=url.group(1), headers=headers, timeout=30) as http:
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
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    assert code == 0
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "Traceback" not in logs
