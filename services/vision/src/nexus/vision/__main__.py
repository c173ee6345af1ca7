"""python -m nexus.vision: settings from the environment, serve until SIGTERM."""

from __future__ import annotations

from nexus.common.server import run_service
from nexus.vision.server import create
from nexus.vision.settings import VisionSettings


def main() -> None:
    """Entry point (also `nexus up`'s way to start the service)."""
    run_service(create, VisionSettings)


if __name__ == "__main__":
    main()
