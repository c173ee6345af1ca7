"""The embedded nats-server: starts, serves JetStream, keeps data across a restart."""

from __future__ import annotations

import pytest

from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings

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
