"""The fault suite: every test here carries the `faults` marker (`make faults` runs only these).

These tests kill and restart real processes (nats-server, services, the gateway) under a client
loop and then count what was accepted, answered and recovered. They also need NATS, so they are
`integration` too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)
