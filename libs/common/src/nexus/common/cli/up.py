"""`nexus up`: run the whole platform on this machine until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from nexus.common.auth import open_key_store
from nexus.common.errors import NexusError, Unavailable
from nexus.common.launcher import Platform, gateway_installed, installed_services
from nexus.common.settings import NexusSettings


def register(subparsers: Any) -> None:
    """Adds the `up` subcommand."""
    parser = subparsers.add_parser("up", help="run NATS, every installed service and the gateway")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".nexus"), help="data and logs (default .nexus)"
    )
    parser.add_argument(
        "--nats-port", type=int, default=4222, help="NATS client port (0: any free one)"
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="gateway HTTP port (0: any free one)"
    )
    parser.add_argument(
        "--services", default="", help="comma-separated services (default: all installed)"
    )
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    """Starts everything, prints where it is, and stops it all cleanly on Ctrl-C or SIGTERM."""
    services = [s for s in args.services.split(",") if s] or installed_services()
    platform = Platform(args.data_dir.resolve(), args.nats_port, args.port, services)
    try:
        await _start(platform)
        await _wait(platform)
    except NexusError as err:
        print(f"nexus up: {err}")
        return 1
    finally:
        print("stopping...", flush=True)
        platform.stop()
    return 0


async def _start(platform: Platform) -> None:
    url = platform.start_nats()
    print(f"NATS (JetStream) on {url}, data in {platform.data_dir}", flush=True)
    admin_key = await _ensure_admin(url)
    print(f"starting services: {', '.join(platform.services) or 'none'}", flush=True)
    await platform.start_services()
    if gateway_installed():
        await platform.start_gateway()
    _announce(platform, admin_key)


async def _ensure_admin(nats_url: str) -> str | None:
    async with open_key_store(NexusSettings(nats_url=nats_url), "nexus-up") as keys:
        return await keys.ensure_admin()


def _announce(platform: Platform, admin_key: str | None) -> None:
    print(
        f"\nNexus is up. Gateway: {platform.gateway_url}"
        f"  (OpenAPI: {platform.gateway_url}/openapi.json)"
    )
    if admin_key:
        print(f"Admin API key (shown once, store it now):\n  export NEXUS_API_KEY={admin_key}")
    else:
        print("Admin API key: printed at first start; make another with `nexus keys create`.")
    print("Logs:", platform.data_dir / "logs", "\nPress Ctrl-C to stop.", flush=True)


async def _wait(platform: Platform) -> None:
    """Returns on Ctrl-C or SIGTERM, or when a child dies (after saying which)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        if dead := platform.dead_children():
            names = ", ".join(f"{c.name} (see {c.log_path})" for c in dead)
            raise Unavailable(f"stopped unexpectedly: {names}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
