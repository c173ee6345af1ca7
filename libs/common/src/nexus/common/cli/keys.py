"""`nexus keys`: create, list and revoke API keys (in the platform's NATS key bucket).

    nexus keys create --name ci --scope anomaly:invoke --scope models:read [--rate-limit 600]
    nexus keys list
    nexus keys revoke <id>

Each connects to NATS at `--nats-url`, or `NEXUS_NATS_URL`, or the NATS of the `nexus up` that
runs with `--data-dir` (its run file), or the default local server.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from nexus.common.auth import ApiKey, KeyStore, open_key_store
from nexus.common.cli._common import NATS_EPILOG, format_rows, platform_command, runner
from nexus.common.settings import NexusSettings

Command = Callable[[KeyStore, argparse.Namespace], Awaitable[None]]

EPILOG = f"""\
{NATS_EPILOG}
A new admin key (the first one was printed, and saved in <data dir>/admin.key, at the first
start of `nexus up`):  nexus keys create --name admin --scope '*'
"""


def register(subparsers: Any) -> None:
    """Adds `keys` with its `create`, `list` and `revoke` subcommands."""
    commands, common = platform_command(
        subparsers,
        "keys",
        help="manage API keys",
        description="Create, list and revoke API keys.",
        epilog=EPILOG,
    )

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
    return runner(_key_store, command)


@asynccontextmanager
async def _key_store(settings: NexusSettings) -> AsyncIterator[KeyStore]:
    async with open_key_store(settings, "nexus-cli") as keys:
        yield keys


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
    return format_rows(("ID", "NAME", "SCOPES", "CREATED", "REVOKED"), [_row(k) for k in keys])


def _row(key: ApiKey) -> tuple[str, str, str, str, str]:
    created = key.created.strftime("%Y-%m-%d %H:%M:%SZ")
    return key.id, key.name, ",".join(sorted(key.scopes)), created, "yes" if key.revoked else "no"
