"""The forecast service through HTTP: forecasts and fits as JSON on the routes of its proto, the
fit followed as an operation, bad input as 400/404 naming what is wrong."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from xml.etree import ElementTree

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.forecast.server import create
from nexus.forecast.settings import ForecastSettings
from nexus.gateway.testing import running_gateway

pytestmark = pytest.mark.integration


@pytest.fixture
async def http(
    start_service: StartService, nexus_settings: NexusSettings
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway with real auth in front of a forecast service, and a key of its scopes."""
    host = await start_service(create, ForecastSettings(grpc_port=0))
    key = await make_key(nexus_settings, "forecast:*", "operations:read")
    async with (
        running_gateway(nexus_settings, {"forecast": f"127.0.0.1:{host.port}"}) as url,
        httpx.AsyncClient(
            base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}
        ) as client,
    ):
        yield client


def _series(series_id: str, n: int = 72) -> dict[str, object]:
    rng = np.random.default_rng(len(series_id))
    stamps = pd.date_range("2024-01-01", periods=n, freq="h")
    values = 10 + np.sin(np.arange(n) * 2 * np.pi / 24) + rng.normal(0, 0.1, n)
    return {
        "id": series_id,
        "timestamps": [t.isoformat() + "Z" for t in stamps],
        "values": values.tolist(),
    }


async def test_a_forecast_and_a_fit_over_http(http: httpx.AsyncClient) -> None:
    body = {
        "data": {"series": [_series("a")]},
        "horizon": 6,
        "levels": [80],
        "models": ["MODEL_SEASONAL_NAIVE"],
    }
    forecast = await http.post("/v1/forecast:forecast", json=body)
    assert forecast.status_code == 200, forecast.text
    (one,) = forecast.json()["forecasts"]
    assert len(one["mean"]) == 6
    assert one["timestamps"][0] == "2024-01-04T00:00:00Z"

    name = f"gw-{uuid.uuid4().hex[:8]}"
    fit = {
        "data": {"series": [_series("a"), _series("bb")]},
        "horizon": 6,
        "models": ["MODEL_AUTO_THETA"],
    }
    started = await http.post(f"/v1/forecast/models/{name}:startFit", json=fit)
    assert started.status_code == 200, started.text
    operation = started.json()["operation"]
    async with asyncio.timeout(60):
        while not operation.get("done"):
            await asyncio.sleep(0.2)
            operation = (await http.get(f"/v1/{operation['name']}")).json()["operation"]
    assert operation["state"] == "OPERATION_STATE_SUCCEEDED", operation
    assert operation["response"]["series"] == 2

    predicted = await http.post(
        f"/v1/forecast/models/{name}:predict", json={"seriesIds": ["bb"], "version": "1"}
    )
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["model"]["version"] == "1"
    unknown = await http.post(
        f"/v1/forecast/models/{name}:predict", json={"seriesIds": ["zz"], "version": "1"}
    )
    assert unknown.status_code == 404


async def test_bad_input_is_a_400_naming_the_field(http: httpx.AsyncClient) -> None:
    series = _series("a")
    values = list(series["values"])  # type: ignore[call-overload]
    series["values"] = values[:10] + ["NaN"] * 20 + values[30:]
    reply = await http.post(
        "/v1/forecast:forecast", json={"data": {"series": [series]}, "horizon": 6}
    )
    assert reply.status_code == 400
    violations = reply.json()["error"]["field_violations"]
    assert violations[0]["field"] == "data.series[0].values"
    assert "20 missing values" in violations[0]["description"]


async def test_prophet_settings_and_network_parameters_bind_from_json(
    http: httpx.AsyncClient,
) -> None:
    prophet = {
        "countries": ["US"],
        "events": [{"name": "sale", "dates": ["2024-01-02T00:00:00Z"], "upperWindow": 1}],
        "changepointPriorScale": 0.1,
        "seasonalityMode": "SEASONALITY_MODE_MULTIPLICATIVE",
    }
    body = {
        "data": {"series": [_series("a")]},
        "horizon": 6,
        "levels": [80],
        "models": ["MODEL_PROPHET"],
        "prophet": prophet,
    }
    reply = await http.post("/v1/forecast:forecast", json=body)
    assert reply.status_code == 200, reply.text
    (one,) = reply.json()["forecasts"]
    assert (one["model"], len(one["mean"])) == ("MODEL_PROPHET", 6)

    refused = await http.post(
        "/v1/forecast:backtest",
        json={
            **body,
            "prophet": {**prophet, "countries": ["XX"]},
            "parameters": [{"model": "MODEL_TRANSFORMER", "values": {"epochs": 2}}],
        },
    )
    assert refused.status_code == 400
    violations = refused.json()["error"]["field_violations"]
    assert violations[0]["field"] == "prophet.countries[0]"


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("CHART_FORMAT_PNG", "image/png"), ("CHART_FORMAT_SVG", "image/svg+xml")],
)
async def test_a_chart_is_served_raw_with_its_content_type(
    http: httpx.AsyncClient, fmt: str, media_type: str
) -> None:
    body = {
        "data": {"series": [_series("a")]},
        "horizon": 6,
        "levels": [80],
        "models": ["MODEL_SEASONAL_NAIVE"],
        "format": fmt,
        "showBacktest": True,
        "backtest": {"windows": 2},
    }
    reply = await http.post("/v1/forecast:renderChart", json=body)

    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == media_type
    if media_type == "image/png":
        assert reply.content.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(reply.content)) as image:
            image.load()
            assert image.size == (1000, 500)
    else:
        assert ElementTree.fromstring(reply.content).tag == "{http://www.w3.org/2000/svg}svg"

    too_wide = await http.post("/v1/forecast:renderChart", json={**body, "width": 4001})
    assert too_wide.status_code == 400


async def test_the_document_declares_the_chart_media_types(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    ok = document["paths"]["/v1/forecast:renderChart"]["post"]["responses"]["200"]["content"]
    binary = {"schema": {"type": "string", "format": "binary"}}
    assert ok == {"image/png": binary, "image/svg+xml": binary}


async def test_a_tuning_search_over_http(http: httpx.AsyncClient) -> None:
    body = {"data": {"series": [_series("a", 200)]}, "horizon": 6, "maxTrials": 2}
    started = await http.post("/v1/forecast:startTune", json=body)
    assert started.status_code == 200, started.text
    operation = started.json()["operation"]
    async with asyncio.timeout(60):
        while not operation.get("done"):
            await asyncio.sleep(0.2)
            operation = (await http.get(f"/v1/{operation['name']}")).json()["operation"]
    assert operation["state"] == "OPERATION_STATE_SUCCEEDED", operation.get("error")
    assert operation["response"]["trials"] == 2
    assert set(operation["response"]["best_parameters"]) >= {"num_leaves", "learning_rate"}, (
        operation["response"]
    )

    refused = await http.post("/v1/forecast:startTune", json={**body, "model": "MODEL_MSTL"})
    assert refused.status_code == 400
