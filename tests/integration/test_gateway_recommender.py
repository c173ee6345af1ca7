"""The recommender service through HTTP: a catalog, interactions, a training followed as an
operation and recommendations as JSON on the routes of its proto; bad input as 400/404/413."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.gateway.testing import running_gateway
from nexus.recommender.server import create
from nexus.recommender.settings import RecommenderSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def http(
    start_service: StartService, nexus_settings: NexusSettings
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway with real auth in front of a recommender service, and a key of its scopes."""
    host = await start_service(create, RecommenderSettings(grpc_port=0, max_batch_interactions=50))
    key = await make_key(nexus_settings, "recommender:*", "operations:read")
    async with (
        running_gateway(nexus_settings, {"recommender": f"127.0.0.1:{host.port}"}) as url,
        httpx.AsyncClient(
            base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}
        ) as client,
    ):
        yield client


def _interactions() -> list[dict[str, object]]:
    """Users u0..u5 share films f0..f3; everyone has seen f0, u0 has not seen f3."""
    films = {f"u{u}": ["f0", "f1", "f2", "f3"] for u in range(1, 6)}
    films["u0"] = ["f0", "f1", "f2"]
    films["v"] = ["f0", "g1"]
    return [{"user_id": u, "item_id": f} for u, seen in films.items() for f in seen]


async def test_a_catalog_trained_and_served_over_http(http: httpx.AsyncClient) -> None:
    name = f"gw-{uuid.uuid4().hex[:8]}"
    created = await http.post("/v1/recommender/catalogs", json={"name": name})
    assert created.status_code == 200, created.text
    base = f"/v1/recommender/catalogs/{name}"
    ingested = await http.post(
        f"{base}/interactions:ingest", json={"interactions": _interactions()}
    )
    assert ingested.json() == {"accepted": 25}
    items = [{"id": "f3", "attributes": {"title": "Heat"}}, {"id": "f1", "attributes": {}}]
    assert (await http.post(f"{base}/items:upsert", json={"items": items})).status_code == 200

    started = await http.post(
        f"{base}:startTraining",
        json={"config": {"algorithm": "ALGORITHM_EASE"}, "promote_to": "production"},
    )
    assert started.status_code == 200, started.text
    operation = started.json()["operation"]
    async with asyncio.timeout(60):
        while not operation.get("done"):
            await asyncio.sleep(0.2)
            operation = (await http.get(f"/v1/{operation['name']}")).json()["operation"]
    assert operation["state"] == "OPERATION_STATE_SUCCEEDED", operation

    reply = await http.post(f"{base}:recommend", json={"user_id": "u0", "count": 1})
    assert reply.status_code == 200, reply.text
    (first,) = reply.json()["items"]
    assert first["item_id"] == "f3"
    assert first["reason"]["kind"] == "REASON_KIND_SIMILAR_TO_SEEN"
    assert reply.json()["model"] == {"name": name, "version": "1", "alias": "production"}
    described = (await http.get(base)).json()["catalog"]
    assert (described["users"], described["interactions"], described["item_records"]) == (
        "7",
        "25",
        "2",
    )  # int64 as JSON strings


async def test_bad_input_is_clear_over_http(http: httpx.AsyncClient) -> None:
    name = f"gw-{uuid.uuid4().hex[:8]}"
    await http.post("/v1/recommender/catalogs", json={"name": name})
    base = f"/v1/recommender/catalogs/{name}"

    negative = await http.post(
        f"{base}/interactions:ingest",
        json={"interactions": [{"user_id": "u", "item_id": "i", "weight": -2}]},
    )
    too_many = await http.post(
        f"{base}/interactions:ingest",
        json={"interactions": [{"user_id": "u", "item_id": f"i{k}"} for k in range(51)]},
    )
    unknown = await http.post("/v1/recommender/catalogs/nope:recommend", json={"user_id": "u"})

    assert negative.status_code == 400
    violation = negative.json()["error"]["field_violations"][0]
    assert violation["field"] == "interactions[0].weight"
    assert too_many.status_code == 413, too_many.text
    assert unknown.status_code == 404


async def test_rules_and_users_over_http(http: httpx.AsyncClient) -> None:
    name = f"gw-{uuid.uuid4().hex[:8]}"
    await http.post("/v1/recommender/catalogs", json={"name": name})
    base = f"/v1/recommender/catalogs/{name}"
    await http.post(f"{base}/interactions:ingest", json={"interactions": _interactions()})
    users = [
        {"id": "v", "attributes": {"country": "DE"}},
        {"id": "new", "attributes": {"country": "DE"}},
    ]
    rules = [
        {"name": "hero", "pin": {"item_id": "f3", "position": 1}},
        {
            "name": "promo",
            "boost": {"match": {"key": "brand", "values": ["acme"]}, "shift": 3},
            "start_time": "2026-01-01T00:00:00Z",
        },
    ]

    upserted = await http.post(f"{base}/users:upsert", json={"users": users})
    stored = await http.put(f"{base}/rules", json={"rules": rules})
    got = await http.get(f"{base}/rules")
    reply = await http.post(f"{base}:recommend", json={"user_id": "new", "count": 2})
    bad = await http.put(
        f"{base}/rules", json={"rules": [{"name": "r", "cap": {"key": "brand", "max_items": 0}}]}
    )

    assert upserted.json() == {"upserted": 2}
    assert stored.status_code == 200, stored.text
    assert got.json()["rules"] == stored.json()["rules"]
    assert got.json()["rules"][1]["start_time"] == "2026-01-01T00:00:00Z"
    first, second = reply.json()["items"]
    assert (first["item_id"], first["reason"]["kind"], first["reason"]["rule"]) == (
        "f3",
        "REASON_KIND_PINNED",
        "hero",
    )
    assert second["item_id"] in {"f0", "g1"}  # what "v", the other German, interacted with
    assert second["reason"]["kind"] == "REASON_KIND_SEGMENT_POPULAR"
    assert bad.status_code == 400
    assert bad.json()["error"]["field_violations"][0]["field"] == "rules[0].cap.max_items"
