"""python -m nexus.recommender: settings from the environment, serve until SIGTERM."""

from __future__ import annotations

from nexus.common.server import run_service
from nexus.recommender.server import create
from nexus.recommender.settings import RecommenderSettings


def main() -> None:
    """Entry point (also `nexus up`'s way to start the service)."""
    run_service(create, RecommenderSettings)


if __name__ == "__main__":
    main()
