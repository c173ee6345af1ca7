"""`python -m nexus.common.probe`, the probe compose and Kubernetes run in every image: its exit
status and its one line, run as a subprocess against a real service and a real gateway."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings, ServiceSettings
from nexus.common.testing.keys import make_key
from nexus.gateway.testing import running_gateway

REGISTRY = "nexus.models.v1.ModelRegistryService"


@dataclass(frozen=True)
class Ran:
    """What one run of the probe did."""

    status: int
    stdout: str
    stderr: str


async def probe(*args: str, env: dict[str, str] | None = None) -> Ran:
    """Runs the probe module in its own process (the event loop keeps serving meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus.common.probe",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def host(nexus_settings: NexusSettings) -> AsyncIterator[ServiceHost]:
    """A real service on a free port, with its model registry, NOT_SERVING until told."""
    host = ServiceHost("probed", ServiceSettings(shutdown_grace_s=0.5), nexus_settings)
    await host.open()
    await host.registry()
    await host.start()
    yield host
    await host.stop()


async def test_grpc_probe_follows_readiness(host: ServiceHost) -> None:
    address = f"127.0.0.1:{host.port}"

    starting = await probe("grpc", address)
    await host.set_serving()
    serving = await probe("grpc", address, "--timeout", "5")
    named = await probe("grpc", address, "--service", REGISTRY)

    assert (starting.status, starting.stderr) == (1, f"probe: {address}: NOT_SERVING\n")
    assert (serving.status, serving.stdout) == (0, f"probe: {address}: SERVING\n")
    assert (named.status, named.stdout) == (0, f"probe: {address} ({REGISTRY}): SERVING\n")


async def test_grpc_probe_fails_for_an_unknown_service_and_an_unreachable_one(
    host: ServiceHost,
) -> None:
    await host.set_serving()
    address, nowhere = f"127.0.0.1:{host.port}", f"127.0.0.1:{free_port()}"

    unknown = await probe("grpc", address, "--service", "nexus.nothing.v1.Nothing")
    unreachable = await probe("grpc", nowhere, "--timeout", "1")

    assert unknown.status == 1
    assert unknown.stderr == (
        f"probe: {address} (nexus.nothing.v1.Nothing): NOT_FOUND: unknown service\n"
    )
    assert unreachable.status == 1
    assert unreachable.stderr.startswith(f"probe: {nowhere}: UNAVAILABLE: ")
    assert unreachable.stderr.count("\n") == 1


async def test_http_probe_follows_the_gateways_readiness(
    host: ServiceHost, nexus_settings: NexusSettings
) -> None:
    async with running_gateway(nexus_settings, {"probed": f"127.0.0.1:{host.port}"}) as url:
        starting = await probe("http", f"{url}/readyz")
        await host.set_serving()
        ready = await probe("http", f"{url}/readyz")
        unwelcome = await probe("http", f"{url}/readyz", "--expect", "503")

    assert (starting.status, starting.stderr) == (
        1,
        f"probe: {url}/readyz: HTTP 503, expected 200\n",
    )
    assert (ready.status, ready.stdout) == (0, f"probe: {url}/readyz: HTTP 200\n")
    assert unwelcome.status == 1


async def test_http_probe_makes_an_authenticated_call_with_the_key_from_a_variable(
    host: ServiceHost, nexus_settings: NexusSettings
) -> None:
    await host.set_serving()
    key = await make_key(nexus_settings, "models:read")
    async with running_gateway(nexus_settings, {"probed": f"127.0.0.1:{host.port}"}) as url:
        models = f"{url}/v1/probed/models"
        with_key = await probe("http", models, "--bearer-env", "PROBE_KEY", env={"PROBE_KEY": key})
        without = await probe("http", models)
        expected_refusal = await probe("http", models, "--expect", "401")
        wrong_key = await probe(
            "http", models, "--bearer-env", "PROBE_KEY", env={"PROBE_KEY": "nxk_bad_key"}
        )

    assert (with_key.status, with_key.stdout) == (0, f"probe: {models}: HTTP 200\n")
    assert (without.status, without.stderr) == (1, f"probe: {models}: HTTP 401, expected 200\n")
    assert expected_refusal.status == 0
    assert wrong_key.status == 1
    assert key not in wrong_key.stderr + with_key.stdout


async def test_http_probe_of_nothing_listening_fails() -> None:
    url = f"http://127.0.0.1:{free_port()}/readyz"

    ran = await probe("http", url, "--timeout", "1")

    assert ran.status == 1
    assert ran.stderr.startswith(f"probe: {url}: unreachable: ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("grpc", "localhost"), "'localhost': not a HOST:PORT address"),
        (("grpc", "127.0.0.1:99999"), "not a HOST:PORT address"),
        (("http", "localhost:8080/readyz"), "not an http:// or https:// URL"),
        (("http", "http://127.0.0.1:1/", "--bearer-env", "NEXUS_PROBE_UNSET"), "unset or empty"),
        (("grpc", "127.0.0.1:1", "--timeout", "0"), "--timeout must be positive"),
        (("tcp", "127.0.0.1:1"), "invalid choice: 'tcp'"),
    ],
)
async def test_a_probe_it_cannot_run_is_a_usage_error(args: tuple[str, ...], says: str) -> None:
    ran = await probe(*args, env={"NEXUS_PROBE_UNSET": ""})

    assert ran.status == 2
    assert says in ran.stderr
