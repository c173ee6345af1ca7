"""Probes, the OpenAPI document, CORS, and trace context."""

from __future__ import annotations

import re
from typing import Any

import httpx
from openapi_spec_validator import validate
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from nexus.common.idempotency import (
    MAX_KEY_LENGTH,
    check_idempotency_key,
    takes_idempotency_key,
)
from nexus.common.settings import NexusSettings
from nexus.common.telemetry import setup_tracing
from nexus.gateway import build_openapi, discover

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


async def test_healthz(client: httpx.AsyncClient) -> None:
    reply = await client.get("/healthz")

    assert (reply.status_code, reply.json()) == (200, {"status": "ok"})


async def test_readyz_follows_the_backends(
    client: httpx.AsyncClient, anomaly: Any, vision: Any
) -> None:
    ready = await client.get("/readyz")
    await anomaly.set_serving(False)
    not_serving = await client.get("/readyz")
    await anomaly.set_serving(True)
    await vision.stop()
    stopped = await client.get("/readyz")

    assert ready.status_code == 200
    assert ready.json()["backends"] == {"anomaly": "SERVING", "vision": "SERVING"}
    assert not_serving.status_code == 503
    assert not_serving.json()["error"]["message"] == "backends not ready: anomaly (NOT_SERVING)"
    assert stopped.status_code == 503
    assert stopped.json()["error"]["message"] == "backends not ready: vision (UNAVAILABLE)"


async def test_openapi_document_is_valid(client: httpx.AsyncClient) -> None:
    reply = await client.get("/openapi.json")

    assert reply.status_code == 200
    document = reply.json()
    validate(document)
    assert document["openapi"].startswith("3.1")


async def test_openapi_covers_every_binding(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    operations = {
        op["operationId"]: (path, method)
        for path, item in document["paths"].items()
        for method, op in item.items()
    }

    assert {b.operation_id for b in discover()} <= set(operations)
    assert operations["AnomalyService_ScorePoints"] == (
        "/v1/anomaly/detectors/{name}:score",
        "post",
    )
    assert operations["ModelRegistryService_ListModels"] == ("/v1/{service}/models", "get")


def test_openapi_operations() -> None:
    document = build_openapi(discover())
    list_models = document["paths"]["/v1/{service}/models"]["get"]
    score = document["paths"]["/v1/anomaly/detectors/{name}:score"]["post"]
    watch = document["paths"]["/v1/anomaly/anomalies:watch"]["get"]

    assert [(p["name"], p["in"]) for p in list_models["parameters"]] == [
        ("service", "path"),
        ("page_size", "query"),
        ("page_token", "query"),
    ]
    assert list_models["x-nexus-scope"] == "models:read"
    body = score["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/nexus.anomaly.v1.ScorePointsRequest"}
    assert score["responses"]["413"] == {"$ref": "#/components/responses/Error413"}
    assert "text/event-stream" in watch["responses"]["200"]["content"]
    assert [p["name"] for p in watch["parameters"]] == ["source"]


def test_openapi_says_what_the_api_enforces() -> None:
    document = build_openapi(discover())
    schemas = document["components"]["schemas"]
    paths = document["paths"]
    score = schemas["nexus.anomaly.v1.ScorePointsRequest"]
    search = schemas["nexus.llm.v1.SearchRequest"]
    train = schemas["nexus.anomaly.v1.TrainDetectorRequest"]["properties"]
    name = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"

    # Required fields, less those a path variable fills; names, versions, ranges.
    assert score["required"] == ["points"]
    assert score["properties"]["points"]["minItems"] == 1
    assert score["properties"]["version"]["pattern"] == r"^([1-9][0-9]{0,17})?$"
    assert score["properties"]["alias"]["pattern"] == f"^({name})?$"
    assert search["properties"]["top_k"] | {} == {
        "type": "integer", "format": "int32", "minimum": 0, "maximum": 100
    }  # fmt: skip
    assert train["validation_fraction"]["exclusiveMaximum"] == 1
    assert schemas["nexus.llm.v1.CreateCollectionRequest"]["properties"]["name"]["pattern"] == (
        f"^{name}$"
    )
    # A source binds a trained detector, a streaming configuration, or both.
    bind = schemas["nexus.anomaly.v1.BindSourceRequest"]
    streaming = schemas["nexus.anomaly.v1.StreamingConfig"]["properties"]
    assert "required" not in bind  # the source is the path's
    assert bind["properties"]["streaming"] == {
        "$ref": "#/components/schemas/nexus.anomaly.v1.StreamingConfig"
    }
    assert (streaming["threshold"]["exclusiveMinimum"], streaming["threshold"]["maximum"]) == (0, 1)
    assert streaming["suppress"]["minimum"] == 0
    detector = paths["/v1/anomaly/detectors/{name}:score"]["post"]["parameters"][0]
    assert detector["schema"]["pattern"] == f"^{name}$"
    # Every status the gateway may answer: 409 for conflicts, 415 only where there is a body.
    promote = paths["/v1/{service}/models/{name}/versions/{version}:promote"]["post"]
    listing = paths["/v1/anomaly/sources"]["get"]
    assert {"409", "414", "415", "501"} <= set(promote["responses"])
    assert "415" not in listing["responses"]


def test_operations_that_honour_an_idempotency_key_declare_it() -> None:
    document = build_openapi(discover())
    parameter = document["components"]["parameters"]["IdempotencyKey"]
    declaring = {
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if {"$ref": "#/components/parameters/IdempotencyKey"} in operation.get("parameters", [])
    }
    honouring = {
        b.operation_id
        for b in discover()
        if not b.server_streaming and takes_idempotency_key(b.full_method)
    }
    pattern = re.compile(parameter["schema"]["pattern"])

    assert declaring == honouring
    assert {"AnomalyService_TrainDetector", "LlmService_Chat"} <= declaring
    assert not {"LlmService_StreamChat", "LlmService_ListModels"} & declaring
    assert (parameter["in"], parameter["required"]) == ("header", False)
    assert parameter["schema"]["maxLength"] == MAX_KEY_LENGTH
    # The schema accepts what the check accepts.
    for key in ["k", "ab", "8e03978e-40d5-4a0e", "a b", '"q"', "x" * 255, "!~"]:
        assert pattern.match(key)
        assert check_idempotency_key(key)
    for key in ["", '""', "x" * 256, "é", " lead", "trail "]:
        assert not pattern.match(key)


def test_openapi_schemas_follow_proto3_json() -> None:
    components = build_openapi(discover())["components"]
    schemas = components["schemas"]
    version = schemas["nexus.models.v1.ModelVersion"]["properties"]
    upload = schemas["nexus.models.v1.UploadModelRequest"]["properties"]
    train = schemas["nexus.anomaly.v1.TrainDetectorRequest"]["properties"]

    assert version["size_bytes"] == {"type": "string", "format": "int64"}
    assert version["create_time"] == {"type": "string", "format": "date-time"}
    assert version["metrics"] == {
        "type": "object",
        "additionalProperties": {"type": "number", "format": "double"},
    }
    assert version["aliases"] == {"type": "array", "items": {"type": "string"}}
    assert upload["artifact"]["format"] == "byte"
    assert train["algorithm"] == {"$ref": "#/components/schemas/nexus.anomaly.v1.Algorithm"}
    assert "ALGORITHM_ISOLATION_FOREST" in schemas["nexus.anomaly.v1.Algorithm"]["enum"]
    error = schemas["nexus.common.v1.ErrorDetail"]["properties"]
    assert set(error) == {"code", "status", "message", "reason", "field_violations"}
    assert set(components["securitySchemes"]) == {"bearer", "apiKey"}
    assert components["securitySchemes"]["apiKey"]["name"] == "X-API-Key"


async def test_trace_context_reaches_the_backend(client: httpx.AsyncClient, anomaly: Any) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("gateway-test", NexusSettings(), exporter=exporter)
    await client.post(
        "/v1/anomaly/detectors/d:score", json={}, headers={"traceparent": TRACEPARENT}
    )

    forwarded = anomaly.seen.metadata[-1]["traceparent"]
    assert forwarded.split("-")[1] == TRACE_ID
    spans = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    span = next(s for s in spans if s.name == "POST /v1/anomaly/detectors/{name}:score")
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert forwarded.split("-")[2] == format(span.context.span_id, "016x")  # the child of our span
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["rpc.method"] == "ScorePoints"


async def test_cors_preflight(start_gateway: Any) -> None:
    client = await start_gateway(cors_origins=["https://app.example"])
    reply = await client.options(
        "/v1/anomaly/detectors/d:score",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )

    assert reply.status_code == 200
    assert reply.headers["access-control-allow-origin"] == "https://app.example"
