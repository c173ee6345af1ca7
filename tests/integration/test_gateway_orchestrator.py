"""Runs through HTTP: a workflow registered and run with POST (the webhook), watched as
Server-Sent Events to its end, read, listed, and its history; bad requests are 400 and 404."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from anomaly_testing import make_key

from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.services import StartService
from nexus.gateway.testing import running_gateway
from nexus.orchestrator.server import create
from nexus.orchestrator.settings import OrchestratorSettings

pytestmark = pytest.mark.integration

SOURCES = """\
name: http-sources
inputs:
  size: {type: integer, default: 5}
steps:
  - id: sources
    call:
      method: nexus.anomaly.v1.AnomalyService/ListSources
      request: {page_size: "${inputs.size}"}
outputs:
  bound: "${size(steps.sources.output.bindings)}"
"""


@pytest.fixture
async def orchestrated(
    anomaly_service: ServiceHost, start_service: StartService, nexus_settings: NexusSettings
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway in front of the anomaly service and an orchestrator that calls it."""
    anomaly = f"127.0.0.1:{anomaly_service.port}"
    settings = OrchestratorSettings(
        grpc_port=0,
        backends={"anomaly": anomaly},
        service_key=await make_key(nexus_settings, "*"),
    )
    orchestrator = await start_service(create, settings)
    backends = {"anomaly": anomaly, "orchestrator": f"127.0.0.1:{orchestrator.port}"}
    async with (
        running_gateway(nexus_settings, backends) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield client


async def test_a_run_is_started_over_http_and_watched_as_server_sent_events(
    orchestrated: httpx.AsyncClient, nexus_settings: NexusSettings
) -> None:
    key = await make_key(nexus_settings, "orchestrator:*", "anomaly:invoke")
    headers = {"Authorization": f"Bearer {key}"}
    registered = await orchestrated.post(
        "/v1/orchestrator/workflows", json={"definition": SOURCES}, headers=headers
    )
    assert registered.status_code == 200, registered.text
    started = await orchestrated.post(
        "/v1/orchestrator/workflows/http-sources:run", json={"inputs": {}}, headers=headers
    )
    assert started.status_code == 200, started.text
    run_id = started.json()["run"]["run_id"]

    states = []
    async with (
        asyncio.timeout(60),
        orchestrated.stream(
            "GET", f"/v1/orchestrator/runs/{run_id}:watch", headers=headers
        ) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                states.append(json.loads(line.removeprefix("data: "))["run"])
    history = await orchestrated.get(f"/v1/orchestrator/runs/{run_id}/history", headers=headers)
    listed = await orchestrated.get(
        "/v1/orchestrator/runs",
        params={"workflow": "http-sources", "state": "RUN_STATE_SUCCEEDED"},
        headers=headers,
    )
    missing = await orchestrated.get(f"/v1/orchestrator/runs/{'0' * 32}", headers=headers)
    bad = await orchestrated.post(
        "/v1/orchestrator/workflows/http-sources:run",
        json={"inputs": {"size": "five"}},
        headers=headers,
    )

    assert states[-1]["state"] == "RUN_STATE_SUCCEEDED", states[-1]
    # Other tests bind sources on the same NATS server: the count is whatever they left.
    assert isinstance(states[-1]["outputs"]["bound"], int | float)
    assert history.json()["steps"][0]["input"] == {"page_size": 5}
    assert run_id in [run["run_id"] for run in listed.json()["runs"]]
    assert (missing.status_code, bad.status_code) == (404, 400)
