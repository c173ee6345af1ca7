"""The fault suite: every test here carries the `faults` marker (`make faults` runs only these).

These tests kill and restart real processes (nats-server, services, the gateway) under a client
loop and then count what was accepted, answered and recovered. They also need NATS, so they are
`integration` too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nexus.common.testing.launcher import StartPlatform, started_platforms

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)


@pytest.fixture
async def start_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[StartPlatform]:
    """What the tests kill, as `nexus up` runs it: `platform = await start_platform("anomaly",
    NEXUS_ANOMALY_OPERATIONS_ACK_WAIT_S="2")` starts NATS and the services as child processes
    on free ports (auth off); stopped at the end of the test (see `started_platforms`)."""
    async with started_platforms(tmp_path, monkeypatch.setenv) as start:
        yield start
