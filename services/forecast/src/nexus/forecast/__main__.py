"""python -m nexus.forecast: settings from the environment, serve until SIGTERM."""

from __future__ import annotations

from nexus.common.server import run_service
from nexus.forecast.server import create
from nexus.forecast.settings import ForecastSettings


def main() -> None:
    """Entry point (also `nexus up`'s way to start the service)."""
    run_service(create, ForecastSettings)


if __name__ == "__main__":
    main()
