"""Pure functions: path templates, deadlines, the status table, settings from the environment."""

from __future__ import annotations

import grpc
import pytest
from starlette.datastructures import Headers

from nexus.gateway import GatewayError, GatewaySettings, http_status
from nexus.gateway.gateway import deadline
from nexus.gateway.paths import PathTemplate, TemplateError


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/anomaly/datasets", "/v1/anomaly/datasets", {}),
        ("/v1/{service}/models", "/v1/vision/models", {("service",): "vision"}),
        (
            "/v1/anomaly/detectors/{name}:train",
            "/v1/anomaly/detectors/a:b:train",
            {("name",): "a:b"},
        ),
        ("/v1/{a.b}/x", "/v1/q%20r/x", {("a", "b"): "q r"}),
        ("/v1/{name=shelves/*}", "/v1/shelves/s%2F1", {("name",): "shelves/s%2F1"}),
        ("/v1/{name=files/**}:get", "/v1/files/a/b/c:get", {("name",): "files/a/b/c"}),
        ("/v1/*/x", "/v1/anything/x", {}),
    ],
)
def test_templates_match(template: str, path: str, expected: dict[tuple[str, ...], str]) -> None:
    assert PathTemplate.parse(template).match(path) == expected


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/anomaly/detectors/{name}:train", "/v1/anomaly/detectors/a:score"),
        ("/v1/anomaly/detectors/{name}:train", "/v1/anomaly/detectors/:train"),
        ("/v1/{service}/models", "/v1/a/b/models"),
        ("/v1/{name=shelves/*}", "/v1/books/1"),
    ],
)
def test_templates_refuse(template: str, path: str) -> None:
    assert PathTemplate.parse(template).match(path) is None


@pytest.mark.parametrize("template", ["v1/x", "/v1/{name", "/v1/{na-me}", "/v1//x", "/v1/x:a/b"])
def test_bad_templates(template: str) -> None:
    with pytest.raises(TemplateError):
        PathTemplate.parse(template)


def test_openapi_path_and_specificity() -> None:
    template = PathTemplate.parse("/v1/{name=shelves/*}/books/{id}:read")

    assert template.openapi_path() == "/v1/{name}/books/{id}:read"
    assert template.literals == 4  # v1, shelves, books, the verb
    assert [v.name for v in template.variables] == ["name", "id"]


def test_a_verb_makes_a_template_more_specific_than_the_same_path_without_it() -> None:
    plain = PathTemplate.parse("/v1/{name=*/operations/*}")
    watch = PathTemplate.parse("/v1/{name=*/operations/*}:watch")

    # The plain template's last segment takes "<id>:watch" too: the router must try the
    # template with the verb first, which it does by the count of literals.
    assert plain.match("/v1/a/operations/x:watch") == {("name",): "a/operations/x:watch"}
    assert watch.match("/v1/a/operations/x:watch") == {("name",): "a/operations/x"}
    assert watch.literals > plain.literals


@pytest.mark.parametrize(
    ("headers", "streaming", "expected"),
    [
        ({}, False, 30.0),
        ({}, True, 3600.0),
        ({"x-nexus-timeout": "2.5"}, False, 2.5),
        ({"x-nexus-timeout": "1e9"}, False, 300.0),
        ({"grpc-timeout": "1500m"}, False, 1.5),
        ({"grpc-timeout": "2M"}, True, 120.0),
    ],
)
def test_deadlines(headers: dict[str, str], streaming: bool, expected: float) -> None:
    assert deadline(Headers(headers), streaming, GatewaySettings()) == pytest.approx(expected)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-nexus-timeout": "0"},
        {"x-nexus-timeout": "-1"},
        {"x-nexus-timeout": "nan"},
        {"grpc-timeout": "5x"},
    ],
)
def test_bad_deadlines(headers: dict[str, str]) -> None:
    with pytest.raises(GatewayError) as caught:
        deadline(Headers(headers), False, GatewaySettings())
    assert caught.value.status == 400


def test_status_table() -> None:
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "REQUEST_TOO_LARGE") == 413
    assert http_status(grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_TOO_LARGE") == 400
    assert http_status(grpc.StatusCode.UNKNOWN) == 500


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_GATEWAY_BACKENDS", '{"anomaly": "anomaly:50051"}')
    monkeypatch.setenv("NEXUS_GATEWAY_CORS_ORIGINS", '["https://app.example"]')
    monkeypatch.setenv("NEXUS_GATEWAY_MAX_BODY_BYTES", "1024")
    settings = GatewaySettings()

    assert settings.backends == {"anomaly": "anomaly:50051"}
    assert settings.cors_origins == ["https://app.example"]
    assert settings.max_body_bytes == 1024
