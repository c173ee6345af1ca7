"""`nexus up`: run the whole platform on this machine until Ctrl-C (or SIGTERM).

Flags win over settings (`NEXUS_DATA_DIR`, `NEXUS_NATS_PORT`, `NEXUS_GATEWAY_PORT`, ...: see
`nexus.common.settings.LauncherSettings`), which win over the defaults. A child that exits is
restarted (NATS first) with backoff; Ctrl-C stops the gateway, then the services, then NATS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from nexus.common.auth import open_key_store
from nexus.common.errors import FailedPrecondition, InvalidArgument, NexusError
from nexus.common.launcher import (
    Backoff,
    Platform,
    admin_key_path,
    gateway_installed,
    installed_services,
    remove_run_file,
    running_platform,
    save_admin_key,
)
from nexus.common.settings import LauncherSettings
from nexus.common.telemetry import setup_logging

log = logging.getLogger("nexus.common.launcher")

REPEAT_S = 1.0
"""A signal this soon after the first is the same Ctrl-C, passed on by a wrapper."""
NEW_ADMIN_KEY = "nexus keys create --name admin --scope '*'"


def register(subparsers: Any) -> None:
    """Adds the `up` subcommand."""
    parser = subparsers.add_parser(
        "up",
        help="run NATS, every installed service and the gateway",
        description="Runs NATS, every installed service and the gateway until Ctrl-C, "
        "restarting whatever exits. Flags win over NEXUS_* settings.",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="data and logs (default: NEXUS_DATA_DIR or .nexus)"
    )
    parser.add_argument(
        "--nats-port",
        type=int,
        help="NATS client port (default: NEXUS_NATS_PORT or 4222; 0: any free one)",
    )
    parser.add_argument(
        "--port",
        type=int,
        help="gateway HTTP port (default: NEXUS_GATEWAY_PORT or 8080; 0: any free one)",
    )
    parser.add_argument(
        "--services", default="", help="comma-separated services (default: all installed)"
    )
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    """Starts everything, prints where it is, keeps it running, and stops it all in order on
    Ctrl-C or SIGTERM (a second one kills what is left)."""
    try:
        settings = _settings(args)
        services = _services(args.services)
    except NexusError as err:
        print(f"nexus up: {err}", file=sys.stderr)
        return 2
    platform = Platform(
        settings.data_dir.resolve(),
        settings.nats_port,
        settings.gateway_port,
        services,
        gateway_host=settings.gateway_host,
    )
    stopping = _stop_on_signals(platform)
    code = 0
    try:
        _setup_logging(settings, platform.data_dir)
        await _until(stopping, _run_platform(platform, settings))
    except NexusError as err:
        print(f"nexus up: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        await _stop(platform, settings)
    return code


def _settings(args: argparse.Namespace) -> LauncherSettings:
    """The settings, with the flags given winning over the environment.

    Raises:
        InvalidArgument: A flag or setting out of range ("gateway_port: ...").
    """
    flags = {"data_dir": args.data_dir, "nats_port": args.nats_port, "gateway_port": args.port}
    try:
        return LauncherSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise InvalidArgument(f"invalid settings: {problems}") from None


def _services(spec: str) -> list[str]:
    installed = installed_services()
    asked = [name.strip() for name in spec.split(",") if name.strip()]
    if unknown := sorted(set(asked) - set(installed)):
        raise InvalidArgument(
            f"no service {', '.join(unknown)}; installed: {', '.join(installed) or 'none'}"
        )
    return asked or installed


def _stop_on_signals(platform: Platform) -> asyncio.Event:
    """SIGINT or SIGTERM sets the returned event; another one during the stop kills what is
    left, unless it comes within `REPEAT_S` (a wrapper such as `timeout` passing on the
    terminal's Ctrl-C that reached the launcher already)."""
    stopping = asyncio.Event()
    first = 0.0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal first
        if not stopping.is_set():
            first = time.monotonic()
            log.info("%s: stopping (once more to kill at once)", sig.name)
            stopping.set()
        elif time.monotonic() - first >= REPEAT_S:
            log.warning("%s again: killing what is left", sig.name)
            platform.kill()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    return stopping


def _setup_logging(settings: LauncherSettings, data_dir: Path) -> None:
    """JSON lines in logs/launcher.log (as every child logs), and what a user must know (a
    restart, the stop) on standard output too."""
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    setup_logging(settings, "launcher", stream=(logs / "launcher.log").open("a", buffering=1))
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(console)


async def _until(stopping: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Runs `work` until it returns or raises, or `stopping` is set (it is cancelled then)."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        task.result()


async def _run_platform(platform: Platform, settings: LauncherSettings) -> None:
    """Starts everything, says where it is, then keeps it running (returns when cancelled)."""
    admin_key = await _start(platform, settings)
    _announce(platform, admin_key)
    backoff = Backoff(
        settings.restart_delay_s, settings.restart_max_delay_s, settings.restart_reset_s
    )
    await platform.supervise(backoff, on_restart=lambda: _write_run_file(platform))


async def _start(platform: Platform, settings: LauncherSettings) -> str | None:
    """Starts NATS, makes the first admin key, starts the services and the gateway; returns the
    admin key when it was made now."""
    if (other := running_platform(platform.data_dir)) is not None:
        raise FailedPrecondition(
            f"another nexus up (pid {other.pid}) runs with {platform.data_dir}"
            + (f"; its gateway: {other.gateway_url}" if other.gateway_url else "")
        )
    platform.check_ports()
    url = await platform.start_nats()
    _write_run_file(platform)
    print(f"NATS (JetStream) on {url}, data in {platform.data_dir}", flush=True)
    admin_key = await _first_admin_key(platform, settings)
    print(f"starting services: {', '.join(platform.services) or 'none'}", flush=True)
    await platform.start_services()
    _write_run_file(platform)
    if gateway_installed():
        await platform.start_gateway()
        _write_run_file(platform)
    return admin_key


def _write_run_file(platform: Platform) -> None:
    """Tells `nexus keys` (and the tests) where everything runs now; a failure to write is
    reported, never fatal."""
    try:
        platform.run_info().write()
    except OSError as err:
        log.warning("cannot write the run file in %s: %s", platform.data_dir, err)


async def _first_admin_key(platform: Platform, settings: LauncherSettings) -> str | None:
    """On the first start, makes the admin key, keeps it in the data directory (mode 0600) and
    prints it, at once; returns it, or None when keys existed."""
    assert platform.nats is not None
    async with open_key_store(
        settings.model_copy(update={"nats_url": platform.nats.url}), "nexus-up"
    ) as keys:
        raw = await keys.ensure_admin()
    if raw is None:
        return None
    try:
        kept = f"also in {save_admin_key(platform.data_dir, raw)}, readable only by you"
    except OSError as err:
        kept = f"NOT saved: {err}; store it now"
    print(f"Admin API key (first start; {kept}):\n  export NEXUS_API_KEY={raw}", flush=True)
    return raw


def _announce(platform: Platform, admin_key: str | None) -> None:
    print(
        f"\nNexus is up. Gateway: {platform.gateway_url}"
        f"  (OpenAPI: {platform.gateway_url}/openapi.json)"
    )
    saved = admin_key_path(platform.data_dir)
    if admin_key is not None:
        print("Admin API key: printed above; delete its file once you have stored it.")
    elif saved.exists():
        print(f"Admin API key: in {saved} (from the first start).")
    else:
        print(f"Admin API key: printed at the first start; a new one: {NEW_ADMIN_KEY}")
    print("Logs:", platform.data_dir / "logs", "\nPress Ctrl-C to stop.", flush=True)


async def _stop(platform: Platform, settings: LauncherSettings) -> None:
    """Stops the gateway, the services, then NATS (in a thread: a signal meanwhile kills)."""
    if platform.nats is not None:
        print("stopping...", flush=True)
        await asyncio.to_thread(platform.stop, settings.stop_timeout_s)
        print("stopped", flush=True)
    remove_run_file(platform.data_dir)
