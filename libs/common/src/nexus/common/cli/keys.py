"""`nexus keys`: create, list and revoke API keys (in the platform's NATS key bucket).

    nexus keys create --name ci --scope anomaly:invoke --scope models:read [--rate-limit 600]
    nexus keys list
    nexus keys revoke <id>

Each connects to NATS at `--nats-url`, or `NEXUS_NATS_URL`, or the NATS of the `nexus up` that
runs with `--data-dir` (its run file), or the default local server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats.errors

from nexus.common.auth import ApiKey, KeyStore, open_key_store
from nexus.common.errors import NexusError
from nexus.common.launcher import running_platform
from nexus.common.settings import LauncherSettings, NexusSettings

Command = Callable[[KeyStore, argparse.Namespace], Awaitable[None]]

EPILOG = """\
NATS: --nats-url, else NEXUS_NATS_URL, else the NATS of the `nexus up` running with --data-dir
(default: NEXUS_DATA_DIR or .nexus), else nats://127.0.0.1:4222.

A new admin key (the first one was printed, and saved in <data dir>/admin.key, at the first
start of `nexus up`):  nexus keys create --name admin --scope '*'
"""


def register(subparsers: Any) -> None:
    """Adds `keys` with its `create`, `list` and `revoke` subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's unset flag must not overwrite one given before the subcommand.
    common.add_argument("--nats-url", default=argparse.SUPPRESS, help="NATS URL (see below)")
    common.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="data directory of the running `nexus up` whose NATS to use",
    )
    parser = subparsers.add_parser(
        "keys",
        help="manage API keys",
        description="Create, list and revoke API keys.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    commands = parser.add_subparsers(dest="keys_command", required=True)

    create = commands.add_parser("create", help="make a key (shown once)", parents=[common])
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="a scope to grant (repeat): '*', '<area>:*' or '<area>:<verb>'",
    )
    create.add_argument(
        "--rate-limit", type=int, default=0, help="requests per minute (0: default)"
    )
    create.set_defaults(func=_runner(_create))

    listing = commands.add_parser("list", help="list keys (never their secrets)", parents=[common])
    listing.set_defaults(func=_runner(_list))

    revoke = commands.add_parser("revoke", help="revoke a key everywhere", parents=[common])
    revoke.add_argument("id", help="the key's id (from `nexus keys list`)")
    revoke.set_defaults(func=_runner(_revoke))


def _runner(command: Command) -> Callable[[argparse.Namespace], Awaitable[int]]:
    """The subcommand's `func`: runs `command` against the key store; 1 on any error."""

    async def run(args: argparse.Namespace) -> int:
        try:
            async with _key_store(args) as keys:
                await command(keys, args)
        except NexusError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except nats.errors.Error as err:
            print(f"error: NATS: {err or type(err).__name__}", file=sys.stderr)
            return 1
        return 0

    return run


@asynccontextmanager
async def _key_store(args: argparse.Namespace) -> AsyncIterator[KeyStore]:
    async with open_key_store(settings_for(args), "nexus-cli") as keys:
        yield keys


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


async def _create(keys: KeyStore, args: argparse.Namespace) -> None:
    key, raw = await keys.create(args.name, args.scope, rate_limit_per_minute=args.rate_limit)
    print(f"created API key {key.id} ({key.name}) with scopes {', '.join(sorted(key.scopes))}")
    print()
    print(f"    {raw}")
    print()
    print("Store it now: it will not be shown again.")


async def _list(keys: KeyStore, args: argparse.Namespace) -> None:
    print(format_table(await keys.list()))


async def _revoke(keys: KeyStore, args: argparse.Namespace) -> None:
    key = await keys.revoke(args.id)
    print(f"revoked API key {key.id} ({key.name})")


def format_table(keys: Sequence[ApiKey]) -> str:
    """Keys as an aligned text table: id, name, scopes, created, revoked."""
    header = ("ID", "NAME", "SCOPES", "CREATED", "REVOKED")
    rows = [header, *(_row(k) for k in keys)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _row(key: ApiKey) -> tuple[str, str, str, str, str]:
    created = key.created.strftime("%Y-%m-%d %H:%M:%SZ")
    return key.id, key.name, ",".join(sorted(key.scopes)), created, "yes" if key.revoked else "no"
