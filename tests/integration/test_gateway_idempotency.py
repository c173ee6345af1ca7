"""The `Idempotency-Key` header through the gateway: a retried or timed-out training trains once."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from nexus.common.idempotency import KEY_REUSED
from nexus.common.testing.waiting import eventually

pytestmark = pytest.mark.integration


def detector() -> str:
    return f"idem-{uuid.uuid4().hex[:8]}"


def training(rows: int = 200, trees: int = 100) -> dict[str, object]:
    data = np.random.default_rng(0).normal(size=(rows, 4))
    return {
        "algorithm": "ALGORITHM_ISOLATION_FOREST",
        "points": [{"values": row.tolist()} for row in data],
        "parameters": {"n_estimators": str(trees)},
    }


async def version_names(http: httpx.AsyncClient, headers: dict[str, str], model: str) -> list[str]:
    reply = await http.get(f"/v1/anomaly/models/{model}", headers=headers)
    assert reply.status_code == 200, reply.text
    return [v["version"] for v in reply.json()["model"]["versions"]]


async def test_a_retry_with_the_header_gets_the_first_answer(
    http: httpx.AsyncClient, operator_headers: dict[str, str]
) -> None:
    model = detector()
    url = f"/v1/anomaly/detectors/{model}:train"
    headers = {**operator_headers, "Idempotency-Key": str(uuid.uuid4())}
    first = await http.post(url, json=training(), headers=headers)
    again = await http.post(url, json=training(), headers=headers)
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json()
    assert await version_names(http, operator_headers, model) == ["1"]
    other = await http.post(url, json=training(rows=100), headers=headers)
    assert other.status_code == 400
    assert other.json()["error"]["reason"] == KEY_REUSED


async def test_a_training_that_timed_out_at_the_gateway_is_not_trained_twice(
    http: httpx.AsyncClient, operator_headers: dict[str, str]
) -> None:
    model = detector()
    url = f"/v1/anomaly/detectors/{model}:train"
    body = training(rows=2000, trees=1000)
    headers = {**operator_headers, "Idempotency-Key": str(uuid.uuid4())}
    timed_out = await http.post(url, json=body, headers={**headers, "X-Nexus-Timeout": "0.3"})
    assert timed_out.status_code == 504, timed_out.text

    async def registered() -> bool:  # the service goes on, and registers the version...
        reply = await http.get(f"/v1/anomaly/models/{model}", headers=operator_headers)
        return reply.status_code == 200

    await eventually(registered, 60)
    # ...which the retry gets back, rather than training a second one
    retried = await http.post(url, json=body, headers={**headers, "X-Nexus-Timeout": "60"})
    assert retried.status_code == 200, retried.text
    assert retried.json()["version"]["version"] == "1"
    assert await version_names(http, operator_headers, model) == ["1"]


@pytest.mark.parametrize("bad", ["", "x" * 256, "clé"])
async def test_a_malformed_header_is_400(
    http: httpx.AsyncClient, operator_headers: dict[str, str], bad: str
) -> None:
    headers: dict[str, str | bytes] = {**operator_headers, "Idempotency-Key": bad.encode()}
    reply = await http.post(
        f"/v1/anomaly/detectors/{detector()}:train", json=training(), headers=headers
    )
    assert reply.status_code == 400, reply.text
    assert "Idempotency-Key" in reply.json()["error"]["message"]
