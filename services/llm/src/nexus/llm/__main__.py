"""python -m nexus.llm: load settings, serve until SIGTERM."""

from __future__ import annotations

import asyncio

from nexus.llm.server import serve


def main() -> None:
    """Entry point (also `nexus up`'s way to start the service)."""
    asyncio.run(serve())


if __name__ == "__main__":
    main()
