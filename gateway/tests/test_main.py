"""`python -m nexus.gateway` as a process: settings from the environment, the key store over
NATS, and a graceful stop on SIGTERM that lets an in-flight request finish."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client

import nexus.gateway
from nexus.common.auth import KeyStore
from nexus.common.settings import NexusSettings

_LISTENING = re.compile(r"gateway listening on (http://\S+)")


def _env(common: NexusSettings, anomaly: Any) -> dict[str, str]:
    # The package's src folder, in case the environment has no editable install of it.
    src = str(Path(nexus.gateway.__file__).parents[2])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, *sys.path]),
        "NEXUS_NATS_URL": common.nats_url,
        "NEXUS_AUTH_ENABLED": "true",
        "NEXUS_LOG_JSON": "false",
        "NEXUS_GATEWAY_PORT": "0",
        "NEXUS_GATEWAY_BACKENDS": f'{{"anomaly": "{anomaly.address}"}}',
        "NEXUS_GATEWAY_SHUTDOWN_GRACE_S": "5",
    }


async def _url(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    while line := await process.stderr.readline():
        if found := _LISTENING.search(line.decode()):
            return found[1]
    raise AssertionError("the gateway exited before listening")


async def _reader_key(nats_client: Client) -> str:
    store = KeyStore(nats_client)  # the default bucket, which the process uses
    await store.start()
    try:
        return (await store.create("main-test", ["models:read"]))[1]
    finally:
        await store.stop()


async def test_process_serves_and_stops_gracefully(
    nexus_settings: NexusSettings, nats_client: Client, anomaly: Any
) -> None:
    key = await _reader_key(nats_client)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus.gateway",
        env=_env(nexus_settings, anomaly),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        url = await asyncio.wait_for(_url(process), timeout=20)
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.post("/v1/anomaly/detectors/d:score", json={})).status_code == 401
            slow = asyncio.create_task(
                client.get("/v1/anomaly/models/sleep-0.5", headers={"X-API-Key": key})
            )
            await asyncio.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            in_flight = await slow
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert in_flight.status_code == 200  # in flight at SIGTERM: finished, not cut off
    assert in_flight.json()["model"]["name"] == "sleep-0.5"


async def test_process_stores_its_bootstrap_admin_key(
    nexus_settings: NexusSettings, anomaly: Any
) -> None:
    admin = "nxk_GatewayAdmin_" + "k" * 43
    env = {**_env(nexus_settings, anomaly), "NEXUS_GATEWAY_BOOTSTRAP_ADMIN_KEY": admin}
    for _ in range(2):  # a restart (another replica) finds the key stored and starts all the same
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nexus.gateway", env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            url = await asyncio.wait_for(_url(process), timeout=20)
            async with httpx.AsyncClient(base_url=url) as client:
                headers = {"Authorization": f"Bearer {admin}"}
                answer = await client.get("/v1/anomaly/models/m", headers=headers)
            assert answer.status_code == 200, answer.text
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), timeout=10)
