"""python -m nexus.orchestrator: settings from the environment, serve until SIGTERM."""

from __future__ import annotations

from nexus.common.server import run_service
from nexus.orchestrator.server import create
from nexus.orchestrator.settings import OrchestratorSettings


def main() -> None:
    """Entry point (also `nexus up`'s way to start the service)."""
    run_service(create, OrchestratorSettings)


if __name__ == "__main__":
    main()
