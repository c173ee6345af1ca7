"""What the `nexus` subcommands that talk to a running platform share: finding its NATS, the
error reporting, the tables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import nats.errors

from nexus.common.errors import NexusError
from nexus.common.launcher import running_platform
from nexus.common.settings import LauncherSettings, NexusSettings

T = TypeVar("T")
Open = Callable[[NexusSettings], AbstractAsyncContextManager[T]]
Command = Callable[[T, argparse.Namespace], Awaitable[None]]


NATS_EPILOG = """\
NATS: --nats-url, else NEXUS_NATS_URL, else the NATS of the `nexus up` running with --data-dir
(default: NEXUS_DATA_DIR or .nexus), else nats://127.0.0.1:4222.
"""


def nats_options() -> argparse.ArgumentParser:
    """A parent parser with `--nats-url` and `--data-dir`, for a subcommand and each of its
    subcommands (NATS_EPILOG says how they choose the server)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's unset flag must not overwrite one given before the subcommand.
    common.add_argument("--nats-url", default=argparse.SUPPRESS, help="NATS URL (see below)")
    common.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="data directory of the running `nexus up` whose NATS to use",
    )
    return common


def platform_command(
    subparsers: Any, name: str, *, help: str, description: str, epilog: str = NATS_EPILOG
) -> tuple[Any, argparse.ArgumentParser]:
    """Adds subcommand `name`, whose own subcommands talk to the platform's NATS.

    Returns:
        Its subparsers, and the parent parser (`--nats-url`, `--data-dir`) each of them takes.
    """
    common = nats_options()
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest=f"{name.replace('-', '_')}_command", required=True)
    return commands, common


def settings_for(args: argparse.Namespace) -> NexusSettings:
    """The settings with the NATS URL to use: `--nats-url`, `NEXUS_NATS_URL`, the running
    platform's (its run file in the data directory), the default."""
    settings = NexusSettings()
    if url := getattr(args, "nats_url", None):
        return settings.model_copy(update={"nats_url": url})
    if "nats_url" in settings.model_fields_set:
        return settings
    data_dir = getattr(args, "data_dir", None) or LauncherSettings().data_dir
    if (running := running_platform(data_dir)) is not None:
        return settings.model_copy(update={"nats_url": running.nats_url})
    return settings


def runner(open_: Open[T], command: Command[T]) -> Callable[[argparse.Namespace], Awaitable[int]]:
    """A subcommand's `func`: runs `command` on what `open_` yields; 1 on any error."""

    async def run(args: argparse.Namespace) -> int:
        try:
            async with open_(settings_for(args)) as target:
                await command(target, args)
        except NexusError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except (nats.errors.Error, TimeoutError) as err:
            print(f"error: NATS: {err or type(err).__name__}", file=sys.stderr)
            return 1
        return 0

    return run


def format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """`rows` under `header`, each column as wide as its widest cell."""
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines
    ]
    return "\n".join(line.rstrip() for line in text)
