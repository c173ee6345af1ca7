"""Interactions survive a nats-server restart: the replica that saw the restart applies what
comes after it, and a replica started afterwards replays every interaction from the stream."""

from __future__ import annotations

import asyncio

import pytest
from recommender_testing import client_of, group, small_settings, two_groups

from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.common.testing.services import StartService
from nexus.recommender.server import create

pytestmark = pytest.mark.timeout(120)


async def test_interactions_survive_a_nats_restart(
    nats_server: NatsServer, start_service: StartService
) -> None:
    common = NexusSettings(nats_url=nats_server.url, registry_signing_key="k", auth_enabled=False)
    first = await start_service(create, small_settings(), common)
    async with client_of(first, "") as client:
        catalog = await client.catalog()
        await client.ingest(catalog, two_groups())
        done = await client.train(catalog, pb.ALGORITHM_EASE)
        assert done.state == ops_pb.OPERATION_STATE_SUCCEEDED

        await asyncio.to_thread(nats_server.restart)
        await client.ingest(catalog, [("ua0", b) for b in group("b")[:8]], weight=3.0)
        after_restart = await client.recommend(catalog, "ua0", count=4)

    second = await start_service(create, small_settings(), common)
    async with client_of(second, "") as client:
        described = await client.recommender.GetCatalog(pb.GetCatalogRequest(name=catalog))
        replayed = await client.recommend(catalog, "ua0", count=4)

    assert sum(i.item_id in group("b") for i in after_restart.items) >= 2
    assert [i.item_id for i in replayed.items] == [i.item_id for i in after_restart.items]
    assert described.catalog.interactions == len(two_groups()) + 8
