"""The embedded nats-server: starts, serves JetStream, keeps data across a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nexus.common.errors import FailedPrecondition
from nexus.common.nats import close, connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.integration


async def test_jetstream_data_survives_restart(nats_server: NatsServer) -> None:
    settings = NexusSettings(nats_url=nats_server.url)
    nc = await connect(settings, "t")
    kv = await nc.jetstream().create_key_value(bucket="survive")
    await kv.put("k", b"v")
    await nc.close()
    nats_server.restart()
    nc = await connect(settings, "t")
    kv = await nc.jetstream().key_value("survive")
    assert (await kv.get("k")).value == b"v"
    await nc.close()


async def test_connect_fails_clearly_without_server() -> None:
    from nexus.common.errors import Unavailable
    from nexus.common.natsserver import free_port

    settings = NexusSettings(nats_url=f"nats://127.0.0.1:{free_port()}", nats_connect_timeout_s=0.5)
    with pytest.raises(Unavailable, match="cannot connect to NATS"):
        await connect(settings, "t")


def test_a_taken_port_is_a_clear_error(nats_server: NatsServer, tmp_path: Path) -> None:
    other = NatsServer(tmp_path / "other", port=nats_server.port)

    with pytest.raises(FailedPrecondition, match=rf"port {nats_server.port} .* is taken"):
        other.start()
    assert not other.running
    assert not (tmp_path / "other").exists()  # it did not start against the other server


def test_a_killed_server_starts_again_on_its_port(nats_server: NatsServer) -> None:
    nats_server.kill()
    nats_server.start()  # its old connections (TIME_WAIT) do not count as taking the port

    assert nats_server.running


async def test_closing_a_client_while_its_server_is_down_is_quiet(nats_server: NatsServer) -> None:
    for wait_s in (0.0, 0.6):  # the reconnect loop at different steps
        nc = await connect(NexusSettings(nats_url=nats_server.url), "t")
        nats_server.kill()
        await eventually(lambda: not nc.is_connected)  # noqa: B023
        await asyncio.sleep(wait_s)
        await nc.publish("pending", b"written while down")  # as an unsubscribe at a stop is
        await close(nc)
        assert nc.is_closed
        nats_server.start()
