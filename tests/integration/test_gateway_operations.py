"""Training as an operation through HTTP: started with POST, watched as Server-Sent Events,
read, listed and cancelled on routes that the operation's name takes to its service."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration


def training_body(n: int = 200) -> dict[str, object]:
    rows = np.random.default_rng(0).normal(size=(n, 3))
    return {
        "algorithm": "ALGORITHM_ISOLATION_FOREST",
        "points": [{"values": row.tolist()} for row in rows],
    }


async def test_a_training_is_started_and_watched_as_server_sent_events(
    http: httpx.AsyncClient, operator_headers: dict[str, str]
) -> None:
    model = f"gw-{uuid.uuid4().hex[:8]}"
    headers = {**operator_headers}
    started = await http.post(
        f"/v1/anomaly/detectors/{model}:startTraining", json=training_body(), headers=headers
    )
    assert started.status_code == 200, started.text
    name = started.json()["operation"]["name"]
    assert name.startswith("anomaly/operations/")

    events = []
    async with (
        asyncio.timeout(60),
        http.stream("GET", f"/v1/{name}:watch", headers=headers) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: "))["operation"])
    done = events[-1]
    assert done["state"] == "OPERATION_STATE_SUCCEEDED"
    assert done["done"] is True
    assert done["response"]["@type"].endswith("nexus.anomaly.v1.TrainDetectorResponse")
    assert done["response"]["version"]["name"] == model

    read = await http.get(f"/v1/{name}", headers=headers)
    assert read.status_code == 200
    assert read.json()["operation"] == done
    listed = await http.get(
        "/v1/anomaly/operations",
        params={"state": "OPERATION_STATE_SUCCEEDED", "page_size": 500},
        headers=headers,
    )
    assert listed.status_code == 200, listed.text
    assert name in [op["name"] for op in listed.json()["operations"]]
    again = await http.post(f"/v1/{name}:cancel", json={}, headers=headers)
    assert again.status_code == 200
    assert again.json()["operation"]["state"] == done["state"]


async def test_unknown_operations_and_services_over_http(
    http: httpx.AsyncClient, operator_headers: dict[str, str]
) -> None:
    unknown = await http.get(f"/v1/anomaly/operations/{uuid.uuid4().hex}", headers=operator_headers)
    assert unknown.status_code == 404, unknown.text
    bad = await http.get("/v1/anomaly/operations/not-an-id", headers=operator_headers)
    assert bad.status_code == 400, bad.text
    elsewhere = await http.get(
        f"/v1/vision/operations/{uuid.uuid4().hex}", headers=operator_headers
    )
    assert elsewhere.status_code == 404, elsewhere.text
    too_small = await http.get(
        "/v1/anomaly/operations", params={"page_size": -1}, headers=operator_headers
    )
    assert too_small.status_code == 400, too_small.text
