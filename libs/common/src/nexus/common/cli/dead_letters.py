"""`nexus dead-letters`: list, inspect and replay what durable consumers gave up on.

    nexus dead-letters list [--consumer anomaly-stream] [--after SEQ] [--limit 50]
    nexus dead-letters show <seq>
    nexus dead-letters replay <seq> [<seq> ...]
    nexus dead-letters replay --all [--consumer anomaly-stream]

Replay after fixing what made the handler fail: each dead letter is published again on its
original subject and removed once JetStream stored it. Each command connects to NATS at
`--nats-url`, or `NEXUS_NATS_URL`, or the NATS of the `nexus up` that runs with `--data-dir` (its
run file), or the default local server.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from nexus.common.cli._common import format_rows, platform_command, runner
from nexus.common.errors import InvalidArgument
from nexus.common.events import DeadLetter, DeadLetters
from nexus.common.nats import connect
from nexus.common.settings import NexusSettings

Command = Callable[[DeadLetters, argparse.Namespace], Awaitable[None]]
_PAGE = 100
_ERROR_WIDTH = 60


def register(subparsers: Any) -> None:
    """Adds `dead-letters` with its `list`, `show` and `replay` subcommands."""
    commands, common = platform_command(
        subparsers,
        "dead-letters",
        help="inspect and replay events consumers gave up on",
        description="List, show and replay dead letters: events durable consumers gave up on.",
    )

    listing = commands.add_parser("list", help="list dead letters, oldest first", parents=[common])
    listing.add_argument("--consumer", default="", help="only this consumer's")
    listing.add_argument("--after", type=int, default=0, help="only those after this sequence")
    listing.add_argument("--limit", type=int, default=_PAGE, help="at most this many")
    listing.set_defaults(func=_runner(_list))

    show = commands.add_parser("show", help="one dead letter in full", parents=[common])
    show.add_argument("seq", type=int, help="its sequence (from `list`)")
    show.set_defaults(func=_runner(_show))

    replay = commands.add_parser(
        "replay", help="publish again on the original subject, then remove", parents=[common]
    )
    replay.add_argument("seq", type=int, nargs="*", help="sequences (from `list`)")
    replay.add_argument("--all", action="store_true", help="every dead letter (of --consumer)")
    replay.add_argument("--consumer", default="", help="with --all: only this consumer's")
    replay.set_defaults(func=_runner(_replay))


def _runner(command: Command) -> Callable[[argparse.Namespace], Awaitable[int]]:
    """The subcommand's `func`: runs `command` against the dead letters; 1 on any error."""
    return runner(_dead_letters, command)


@asynccontextmanager
async def _dead_letters(settings: NexusSettings) -> AsyncIterator[DeadLetters]:
    nc = await connect(settings, "nexus-cli")
    try:
        yield DeadLetters(nc.jetstream())
    finally:
        await nc.close()


async def _list(letters: DeadLetters, args: argparse.Namespace) -> None:
    found = await letters.list(consumer=args.consumer, after=args.after, limit=args.limit)
    if not found:
        print("no dead letters")
        return
    print(format_table(found))
    if len(found) == args.limit:
        print(f"\nmore may follow: --after {found[-1].seq}")


async def _show(letters: DeadLetters, args: argparse.Namespace) -> None:
    print(describe(await letters.get(args.seq)))


async def _replay(letters: DeadLetters, args: argparse.Namespace) -> None:
    if args.all == bool(args.seq):
        raise InvalidArgument("give the sequences to replay, or --all")
    for seq in args.seq or [letter.seq async for letter in _every(letters, args.consumer)]:
        ack = await letters.replay(seq)
        print(f"replayed dead letter {seq} as {ack.stream} #{ack.seq}")


async def _every(letters: DeadLetters, consumer: str) -> AsyncIterator[DeadLetter]:
    after = 0
    while page := await letters.list(consumer=consumer, after=after, limit=_PAGE):
        for letter in page:
            yield letter
        after = page[-1].seq


def format_table(letters: Sequence[DeadLetter]) -> str:
    """Dead letters as an aligned table: one line each, the error cut short."""
    header = ("SEQ", "DIED", "CONSUMER", "REASON", "DELIVERIES", "SUBJECT", "EVENT", "ERROR")
    return format_rows(header, [_row(letter) for letter in letters])


def _row(letter: DeadLetter) -> tuple[str, ...]:
    died = letter.time.strftime("%Y-%m-%d %H:%M:%SZ") if letter.time else "?"
    error = letter.error
    if len(error) > _ERROR_WIDTH:
        error = error[: _ERROR_WIDTH - 3] + "..."
    return (
        str(letter.seq),
        died,
        letter.consumer,
        letter.reason,
        str(letter.deliveries),
        letter.subject,
        letter.event_id or "-",
        error,
    )


def describe(letter: DeadLetter) -> str:
    """One dead letter in full: where it came from, why it died, its headers and payload."""
    lines = [
        f"dead letter {letter.seq}",
        f"  died:        {letter.time.isoformat() if letter.time else '?'}",
        f"  consumer:    {letter.consumer}",
        f"  reason:      {letter.reason}",
        f"  deliveries:  {letter.deliveries}",
        f"  error:       {letter.error}",
        f"  subject:     {letter.subject}",
        f"  from:        {letter.stream} #{letter.stream_seq}",
        "  headers:",
        *(f"    {name}: {value}" for name, value in sorted(letter.headers.items())),
        f"  payload ({len(letter.data)} bytes):",
        *(f"    {line}" for line in payload_text(letter).splitlines()),
    ]
    return "\n".join(lines)


def payload_text(letter: DeadLetter) -> str:
    """The payload as JSON when it decodes as its `ce-type`, else as text or base64."""
    message = _message_of(letter.event_type)
    if message is not None:
        try:
            message.ParseFromString(letter.data)
            return json_format.MessageToJson(message, indent=2)
        except DecodeError:
            pass
    try:
        text = letter.data.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(letter.data).decode()
    return text if text.isprintable() else "base64:" + base64.b64encode(letter.data).decode()


def _message_of(full_name: str) -> Message | None:
    """An empty message of a platform type (`nexus.metrics.v1.MetricPoint`), if it is one."""
    package = full_name.rpartition(".")[0]
    if not package.startswith("nexus."):
        return None
    module = "nexus.api." + package.removeprefix("nexus.")
    try:
        found = importlib.import_module(module)
        for info in pkgutil.iter_modules(found.__path__):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"{module}.{info.name}")
        descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    except (ImportError, KeyError):
        return None
    return message_factory.GetMessageClass(descriptor)()
