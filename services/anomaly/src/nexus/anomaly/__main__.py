"""python -m nexus.anomaly: settings from the environment, serve until SIGTERM."""

from __future__ import annotations

from nexus.anomaly.server import create
from nexus.anomaly.settings import AnomalySettings
from nexus.common.server import run_service


def main() -> None:
    """Entry point (also `nexus up`'s way to start the service)."""
    run_service(create, AnomalySettings)


if __name__ == "__main__":
    main()
