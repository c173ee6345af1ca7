"""python -m nexus.example: settings from the environment, serve until SIGTERM."""

from __future__ import annotations

from nexus.common.server import run_service
from nexus.example.server import create
from nexus.example.settings import ExampleSettings


def main() -> None:
    """Entry point (also `nexus up`'s way to start the service)."""
    run_service(create, ExampleSettings)


if __name__ == "__main__":
    main()
