"""End to end through HTTP: gateway -> anomaly service -> NATS, with real keys."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import numpy as np
import pytest
from anomaly_testing import make_key
from nats.aio.client import Client as Nats
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.api.models.v1.events_pb2 import ModelChanged
from nexus.common.events import Event, EventBus
from nexus.common.settings import NexusSettings
from nexus.common.telemetry import setup_tracing

pytestmark = pytest.mark.integration


def name() -> str:
    return f"gw-{uuid.uuid4().hex[:8]}"


def cloud_json(n: int = 200, seed: int = 0) -> list[dict[str, list[float]]]:
    rows = np.random.default_rng(seed).normal(size=(n, 3))
    return [{"values": row.tolist()} for row in rows]


async def train(
    http: httpx.AsyncClient, headers: dict[str, str], model: str, **extra: object
) -> dict:
    body = {"algorithm": "ALGORITHM_ISOLATION_FOREST", "points": cloud_json(), **extra}
    reply = await http.post(f"/v1/anomaly/detectors/{model}:train", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def test_train_promote_score(
    http: httpx.AsyncClient, operator_headers: dict[str, str]
) -> None:
    model = name()
    trained = await train(http, operator_headers, model)
    version = trained["version"]["version"]
    promoted = await http.post(
        f"/v1/anomaly/models/{model}/versions/{version}:promote",
        json={"alias": "production"},
        headers=operator_headers,
    )
    assert promoted.status_code == 200, promoted.text
    points = [{"id": "normal", "values": [0.1, 0.0, -0.1]}, {"id": "odd", "values": [9, -9, 9]}]
    reply = await http.post(
        f"/v1/anomaly/detectors/{model}:score", json={"points": points}, headers=operator_headers
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [s["is_anomaly"] for s in body["scores"]] == [False, True]
    assert body["model"] == {"name": model, "version": version, "alias": "production"}


async def test_no_key_is_401_and_a_narrow_key_is_403(
    http: httpx.AsyncClient, nexus_settings: NexusSettings
) -> None:
    reader = await make_key(nexus_settings, "models:read")
    url = f"/v1/anomaly/detectors/{name()}:score"
    body = {"points": [{"values": [1.0]}]}
    missing = await http.post(url, json=body)
    narrow = await http.post(url, json=body, headers={"Authorization": f"Bearer {reader}"})
    assert missing.status_code == 401
    assert narrow.status_code == 403
    assert "anomaly:invoke" in narrow.json()["error"]["message"]


async def test_bad_input_gets_a_clear_400(
    http: httpx.AsyncClient, operator_headers: dict[str, str]
) -> None:
    model = name()
    await train(http, operator_headers, model, promote_to="production")
    reply = await http.post(
        f"/v1/anomaly/detectors/{model}:score",
        json={"points": [{"values": [1.0, 2.0]}]},
        headers=operator_headers,
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert "trained on 3" in error["message"]


async def test_a_source_binds_a_streaming_detector_over_http(
    http: httpx.AsyncClient, operator_headers: dict[str, str]
) -> None:
    source = name()
    streaming = {"kind": "windowed_gaussian", "parameters": {"window": "500"}, "suppress": 2}
    put = await http.put(
        f"/v1/anomaly/sources/{source}", json={"streaming": streaming}, headers=operator_headers
    )
    listed = await http.get("/v1/anomaly/sources?page_size=500", headers=operator_headers)
    assert put.status_code == 200, put.text
    binding = put.json()["binding"]
    assert (binding["detector"], binding["alias"]) == ("", "")
    assert binding["streaming"]["kind"] == "windowed_gaussian"
    assert binding["streaming"]["suppress"] == 2
    assert 0 < binding["streaming"]["threshold"] <= 1  # the default, filled in
    assert binding in listed.json()["bindings"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "detector"),
        ({"streaming": {"kind": "nope"}}, "streaming.kind"),
        ({"streaming": {"parameters": {"window": "1"}}}, "streaming.parameters.window"),
        ({"streaming": {"threshold": 0}}, "streaming.threshold"),
        ({"streaming": {"threshold": 1.5}}, "streaming.threshold"),
        ({"streaming": {"suppress": -1}}, "streaming.suppress"),
        ({"alias": "production", "streaming": {}}, "alias"),
    ],
)
async def test_a_bad_streaming_binding_is_a_400_naming_the_field(
    http: httpx.AsyncClient, operator_headers: dict[str, str], body: dict[str, object], field: str
) -> None:
    reply = await http.put(f"/v1/anomaly/sources/{name()}", json=body, headers=operator_headers)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["field_violations"][0]["field"] == field


async def test_ab_split_through_http_is_sticky(
    http: httpx.AsyncClient, operator_headers: dict[str, str]
) -> None:
    model = name()
    await train(http, operator_headers, model, promote_to="production", seed=1)
    await train(http, operator_headers, model, seed=2)
    split = {"splits": [{"version": "1", "weight": 1}, {"version": "2", "weight": 1}]}
    reply = await http.put(
        f"/v1/anomaly/models/{model}/aliases/production", json=split, headers=operator_headers
    )
    assert reply.status_code == 200, reply.text
    versions: dict[str, set[str]] = {}
    for user in range(30):
        for _ in range(2):
            body = {"points": [{"values": [0, 0, 0]}], "routing_key": f"u{user}"}
            scored = await http.post(
                f"/v1/anomaly/detectors/{model}:score", json=body, headers=operator_headers
            )
            versions.setdefault(f"u{user}", set()).add(scored.json()["model"]["version"])
    assert all(len(v) == 1 for v in versions.values())
    assert set().union(*versions.values()) == {"1", "2"}


async def test_anomalies_stream_as_server_sent_events(
    http: httpx.AsyncClient, operator_headers: dict[str, str], nats_client: Nats
) -> None:
    bus = EventBus(nats_client, "test")
    source = name()
    # A detector that flags every one of the repeated spikes (this is about the transport).
    streaming = {"kind": "windowed_gaussian", "threshold": 0.9999, "suppress": 0}
    bound = await http.put(
        f"/v1/anomaly/sources/{source}", json={"streaming": streaming}, headers=operator_headers
    )
    assert bound.status_code == 200, bound.text
    for i in range(20):
        point = MetricPoint(source=source, id=f"w{i}", values=[0.01 * (i % 3), 0.0])
        await bus.publish(f"nexus.metrics.{source}", point)

    async def spike() -> None:
        for i in range(100):
            point = MetricPoint(source=source, id=f"spike-{i}", values=[100.0, 0.0])
            await bus.publish(f"nexus.metrics.{source}", point)
            await asyncio.sleep(0.1)

    spiker = asyncio.create_task(spike())
    try:
        url = f"/v1/anomaly/anomalies:watch?source={source}"
        async with asyncio.timeout(20), http.stream("GET", url, headers=operator_headers) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("data:"):
                    anomaly = json.loads(line[5:])["anomaly"]
                    assert anomaly["source"] == source
                    # A warm-up point may be flagged after the watch opened (the detector has
                    # seen too few values then): read on until a spike's anomaly arrives.
                    if anomaly["point_id"].startswith("spike-"):
                        break
    finally:
        spiker.cancel()
    assert anomaly["point_id"].startswith("spike-")


async def test_one_trace_spans_gateway_service_and_nats(
    http: httpx.AsyncClient,
    operator_headers: dict[str, str],
    nexus_settings: NexusSettings,
    nats_client: Nats,
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", nexus_settings, exporter=exporter)
    model = name()
    received: asyncio.Queue[Event[ModelChanged]] = asyncio.Queue()

    async def on_change(event: Event[ModelChanged]) -> None:
        if event.data.name == model:
            await received.put(event)

    watcher = await EventBus(nats_client, "test").watch(
        "nexus.models.anomaly.>", ModelChanged, on_change
    )
    try:
        await train(http, operator_headers, model)
        await asyncio.wait_for(received.get(), 10)
        await asyncio.sleep(0.2)  # the consumer span ends after the handler returns
    finally:
        await watcher.stop()
    spans = exporter.get_finished_spans()
    gateway = [s for s in spans if s.kind.name == "SERVER" and "train" in s.name.lower()]
    assert gateway, [s.name for s in spans]
    trace_id = gateway[0].context.trace_id
    in_trace = {s.name for s in spans if s.context.trace_id == trace_id}
    assert any("TrainDetector" in n for n in in_trace), in_trace
    assert any(n.startswith("publish nexus.models.anomaly") for n in in_trace), in_trace
    assert any(n.startswith("process nexus.models.anomaly") for n in in_trace), in_trace


async def test_openapi_describes_the_anomaly_routes(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert "/v1/anomaly/detectors/{name}:score" in spec["paths"]
    assert "/v1/{service}/models" in spec["paths"]
