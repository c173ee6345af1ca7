"""API keys at the edge (a real KeyStore over the test NATS) and per-key rate limits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from nexus.common.auth import KeyStore
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.common.testing.waiting import eventually
from nexus.gateway.ratelimit import RateLimiter

SCORE = "/v1/anomaly/detectors/d:score"


@pytest.fixture
async def keys(nats_client: Client) -> AsyncIterator[KeyStore]:
    """A key store in a bucket of its own."""
    bucket = f"test_keys_{uuid.uuid4().hex[:8]}"
    store = KeyStore(nats_client, bucket=bucket)
    await store.start()
    yield store
    await store.stop()
    await nats_client.jetstream().delete_key_value(bucket)


async def test_missing_key_is_401(start_gateway: Any, keys: KeyStore, anomaly: Any) -> None:
    client = await start_gateway(keys=keys)
    reply = await client.post(SCORE, json={})

    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json()["error"]["status"] == "UNAUTHENTICATED"
    assert anomaly.seen.requests == []


async def test_invalid_key_is_401(start_gateway: Any, keys: KeyStore) -> None:
    client = await start_gateway(keys=keys)
    reply = await client.post(SCORE, json={}, headers={"Authorization": "Bearer nxk_nope"})

    assert reply.status_code == 401


async def test_key_without_the_scope_is_403(start_gateway: Any, keys: KeyStore) -> None:
    _, raw = await keys.create("reader", ["models:read"])
    client = await start_gateway(keys=keys)
    reply = await client.post(SCORE, json={}, headers={"Authorization": f"Bearer {raw}"})
    allowed = await client.get("/v1/anomaly/models", headers={"Authorization": f"Bearer {raw}"})

    assert reply.status_code == 403
    assert reply.json()["error"]["status"] == "PERMISSION_DENIED"
    assert "anomaly:invoke" in reply.json()["error"]["message"]
    assert allowed.status_code == 200


async def test_valid_key_is_forwarded(start_gateway: Any, keys: KeyStore, anomaly: Any) -> None:
    _, raw = await keys.create("app", ["anomaly:invoke"])
    client = await start_gateway(keys=keys)
    bearer = await client.post(SCORE, json={}, headers={"Authorization": f"Bearer {raw}"})
    header = await client.post(SCORE, json={}, headers={"X-API-Key": raw})

    assert bearer.status_code == header.status_code == 200
    # Services check the key again, so the gateway forwards it as a bearer token.
    assert [m["authorization"] for m in anomaly.seen.metadata] == [f"Bearer {raw}"] * 2


async def test_auth_off_still_forwards_a_key(client: httpx.AsyncClient, anomaly: Any) -> None:
    await client.post(SCORE, json={}, headers={"X-API-Key": "k"})

    assert anomaly.seen.metadata[-1]["authorization"] == "Bearer k"


async def test_rate_limit_per_key(start_gateway: Any, keys: KeyStore) -> None:
    _, slow = await keys.create("slow", ["anomaly:invoke"], rate_limit_per_minute=60)
    _, other = await keys.create("other", ["anomaly:invoke"])
    client = await start_gateway(keys=keys, rate_limit_per_minute=600, rate_limit_burst=2)

    codes = [(await client.post(SCORE, json={}, headers={"X-API-Key": slow})) for _ in range(3)]
    fine = await client.post(SCORE, json={}, headers={"X-API-Key": other})

    assert [r.status_code for r in codes] == [200, 200, 429]
    limited = codes[-1]
    assert limited.headers["retry-after"] == "1"  # 60 per minute: one token a second
    assert limited.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert limited.json()["error"]["reason"] == "RATE_LIMITED"
    assert fine.status_code == 200


async def test_rate_limit_by_address_when_auth_is_off(start_gateway: Any) -> None:
    client = await start_gateway(rate_limit_per_minute=6, rate_limit_burst=1)
    first = await client.post(SCORE, json={})
    second = await client.post(SCORE, json={})

    assert (first.status_code, second.status_code) == (200, 429)
    assert int(second.headers["retry-after"]) == 10


def test_token_bucket_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(burst=2, max_keys=10, clock=lambda: now[0])

    assert [limiter.acquire("k", 60) for _ in range(3)] == [0.0, 0.0, 1.0]
    now[0] = 0.5
    assert limiter.acquire("k", 60) == pytest.approx(0.5)
    now[0] = 1.0
    assert limiter.acquire("k", 60) == 0.0
    assert limiter.acquire("k", 0) == 0.0  # 0: no limit


def test_bucket_table_is_bounded() -> None:
    limiter = RateLimiter(burst=1, max_keys=3, clock=lambda: 0.0)
    for i in range(10):
        limiter.acquire(f"k{i}", 60)
    limiter.acquire("k9", 60)  # recently used: kept

    assert len(limiter) == 3
    assert limiter.acquire("k9", 60) > 0


async def test_without_nats_the_gateway_is_not_ready_and_refuses_at_once(
    start_gateway: Any, nats_server: NatsServer
) -> None:
    nc = await connect(NexusSettings(nats_url=nats_server.url), "test")
    keys = KeyStore(nc)
    await keys.start()
    _, raw = await keys.create("app", ["anomaly:invoke"])
    client = await start_gateway(keys=keys)
    headers = {"X-API-Key": raw}
    before = await client.post(SCORE, json={}, headers=headers)  # the key is cached now

    nats_server.kill()
    await eventually(lambda: not keys.connected)
    not_ready = await client.get("/readyz")
    refused = await client.post(SCORE, json={}, headers=headers, timeout=2.0)
    nats_server.start()
    await eventually(lambda: keys.connected)
    ready = await client.get("/readyz")
    after = await client.post(SCORE, json={}, headers=headers)
    await keys.stop()
    await nc.close()

    assert before.status_code == 200
    assert not_ready.status_code == 503
    assert not_ready.json()["error"]["message"] == "NATS not connected"
    assert not_ready.json()["error"]["reason"] == "NATS_NOT_CONNECTED"
    # Not served from the cache: a revocation made meanwhile could not have reached the gateway.
    assert refused.status_code == 503
    assert refused.json()["error"]["status"] == "UNAVAILABLE"
    assert (ready.status_code, after.status_code) == (200, 200)
