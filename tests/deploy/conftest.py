"""The chart checks' helpers (chart_testing) are importable from this folder's tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from chart_testing import Manifests, render_environments


@pytest.fixture(scope="session")
def environments() -> dict[str, Manifests]:
    """Each environment's objects (dev, prod, gpu), rendered once per session."""
    return render_environments()
