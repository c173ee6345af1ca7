"""The `nexus` command: `nexus up` runs the platform, `nexus keys ...` manages API keys,
`nexus dead-letters ...` inspects and replays the events consumers gave up on.

Each subcommand lives in its own module with a `register(subparsers)` function that adds its
parser and sets `func` (an async callable taking the parsed arguments and returning an exit code).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from nexus.common.cli import dead_letters as dead_letters
from nexus.common.cli import keys as keys
from nexus.common.cli import up as up


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="nexus", description="Nexus: a self-hostable AI platform")
    subparsers = parser.add_subparsers(dest="command", required=True)
    up.register(subparsers)
    keys.register(subparsers)
    dead_letters.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(asyncio.run(args.func(args)))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
