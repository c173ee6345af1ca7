"""python -m nexus.llm: settings from the environment, serve until SIGTERM."""

from __future__ import annotations

from nexus.common.server import run_service
from nexus.llm.server import create
from nexus.llm.settings import LlmSettings


def main() -> None:
    """Entry point (also `nexus up`'s way to start the service)."""
    run_service(create, LlmSettings)


if __name__ == "__main__":
    main()
