"""Telemetry over real gRPC servers: trace propagation, RPC metrics, /metrics, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from nexus.common.errors import NotFound
from nexus.common.settings import NexusSettings
from nexus.common.telemetry import (
    FREE_PORT,
    MetricsInterceptor,
    TracingInterceptor,
    client_interceptors,
    client_metadata,
    extract_context,
    inject_headers,
    observe_batch,
    record_event,
    record_predictions,
    setup_logging,
    setup_tracing,
    start_metrics_server,
    tracer,
)

EXPORTER = InMemorySpanExporter()

integration = pytest.mark.integration


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    setup_tracing("test-telemetry", NexusSettings(), exporter=EXPORTER)
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


# A service of every call kind with raw bytes messages (no serializers), to exercise each shape.
SERVICE = "test.Echo"


async def _unary(request: bytes, context: Any) -> bytes:
    if request == b"missing":
        raise NotFound("no such thing")
    if request == b"deny":
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")
    if request == b"crash":
        raise RuntimeError("secret internals")
    return request


async def _unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(3):
        yield request


async def _writer(request: bytes, context: Any) -> None:
    await context.write(request)
    await context.write(request)


async def _stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return b"".join([r async for r in requests])


async def _stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def _echo_handler() -> Any:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(_unary_stream),
            "Writer": grpc.unary_stream_rpc_method_handler(_writer),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(_stream_stream),
        },
    )


@pytest.fixture
def service_label() -> str:
    return f"svc_{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def target(service_label: str) -> AsyncIterator[str]:
    server = grpc.aio.server(interceptors=[TracingInterceptor(), MetricsInterceptor(service_label)])
    server.add_generic_rpc_handlers((_echo_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


def _server_span(exporter: InMemorySpanExporter, method: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == f"{SERVICE}/{method}"]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


# --- tracing --------------------------------------------------------------------------------


@integration
async def test_the_callers_trace_continues_in_the_server(
    target: str, spans: InMemorySpanExporter
) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        with tracer().start_as_current_span("client") as client:
            await ch.unary_unary(f"/{SERVICE}/Unary")(b"hi", metadata=client_metadata())
    server = _server_span(spans, "Unary")
    assert server.kind == trace.SpanKind.SERVER
    assert server.parent is not None
    assert server.parent.span_id == client.get_span_context().span_id
    assert server.context.trace_id == client.get_span_context().trace_id
    assert server.attributes is not None
    assert server.attributes["rpc.method"] == "Unary"
    assert server.attributes["rpc.grpc.status_code"] == 0


@integration
async def test_client_interceptors_send_the_trace_on_every_kind(
    target: str, spans: InMemorySpanExporter
) -> None:
    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    async with grpc.aio.insecure_channel(target, interceptors=client_interceptors()) as ch:
        with tracer().start_as_current_span("client") as client:
            await ch.unary_unary(f"/{SERVICE}/Unary")(b"x")
            assert len([m async for m in ch.unary_stream(f"/{SERVICE}/UnaryStream")(b"x")]) == 3
            assert len([m async for m in ch.unary_stream(f"/{SERVICE}/Writer")(b"x")]) == 2
            assert await ch.stream_unary(f"/{SERVICE}/StreamUnary")(requests()) == b"ab"
            echoed = ch.stream_stream(f"/{SERVICE}/StreamStream")(requests())
            assert [m async for m in echoed] == [b"a", b"b"]
    trace_id = client.get_span_context().trace_id
    for method in ["Unary", "UnaryStream", "Writer", "StreamUnary", "StreamStream"]:
        assert _server_span(spans, method).context.trace_id == trace_id


@integration
async def test_spans_record_failures(target: str, spans: InMemorySpanExporter) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary(f"/{SERVICE}/Unary")
        for request in [b"missing", b"crash"]:
            with pytest.raises(grpc.aio.AioRpcError):
                await call(request)
    by_code = {_status_code(s): s for s in spans.get_finished_spans()}
    assert set(by_code) == {5, 13}
    assert by_code[5].status.status_code == trace.StatusCode.UNSET  # NOT_FOUND: the caller's
    crash = by_code[13]
    assert crash.status.status_code == trace.StatusCode.ERROR
    assert crash.status.description == "INTERNAL"
    assert [e.name for e in crash.events] == ["exception"]


def _status_code(span: ReadableSpan) -> object:
    return (span.attributes or {}).get("rpc.grpc.status_code")


def test_setup_tracing_is_idempotent(spans: InMemorySpanExporter) -> None:
    setup_tracing("test-telemetry", NexusSettings(), exporter=EXPORTER)
    setup_tracing("other", NexusSettings())
    with tracer().start_as_current_span("once"):
        pass
    assert [s.name for s in spans.get_finished_spans()] == ["once"]


def test_headers_carry_the_context_both_ways() -> None:
    with tracer().start_as_current_span("publish") as span:
        headers = inject_headers({"ce-id": "1"})
    assert headers["traceparent"].split("-")[1] == f"{span.get_span_context().trace_id:032x}"
    remote = trace.get_current_span(extract_context(headers)).get_span_context()
    assert remote.span_id == span.get_span_context().span_id
    assert not trace.get_current_span(extract_context({})).get_span_context().is_valid


# --- metrics --------------------------------------------------------------------------------


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@integration
async def test_rpc_metrics_count_each_call_with_its_code(target: str, service_label: str) -> None:
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary(f"/{SERVICE}/Unary")
        await call(b"a")
        await call(b"b")
        for request in [b"deny", b"missing"]:
            with pytest.raises(grpc.aio.AioRpcError):
                await call(request)
        assert len([m async for m in ch.unary_stream(f"/{SERVICE}/UnaryStream")(b"x")]) == 3
    method = f"{SERVICE}/Unary"
    labels = {"service": service_label, "method": method}
    assert _sample("nexus_rpc_requests_total", **labels, code="OK") == 2
    assert _sample("nexus_rpc_requests_total", **labels, code="PERMISSION_DENIED") == 1
    assert _sample("nexus_rpc_requests_total", **labels, code="NOT_FOUND") == 1
    assert _sample("nexus_rpc_duration_seconds_count", **labels) == 4
    assert _sample("nexus_rpc_in_flight", **labels) == 0
    streamed = {"service": service_label, "method": f"{SERVICE}/UnaryStream", "code": "OK"}
    assert _sample("nexus_rpc_requests_total", **streamed) == 1


def test_domain_metric_helpers(service_label: str) -> None:
    record_predictions(service_label, "m", "3", 5)
    record_predictions(service_label, "m", "3")
    observe_batch(service_label, "score", 8)
    record_event(f"nexus.{service_label}.done", "ok")
    assert _sample("nexus_predictions_total", service=service_label, model="m", version="3") == 6
    assert _sample("nexus_batch_size_sum", service=service_label, batcher="score") == 8
    assert _sample("nexus_events_total", subject=f"nexus.{service_label}.done", result="ok") == 1


def test_metrics_endpoint_answers_over_http(service_label: str) -> None:
    assert start_metrics_server(0) == 0
    record_predictions(service_label, "m", "1")
    port = start_metrics_server(FREE_PORT, addr="127.0.0.1")
    assert port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert f'nexus_predictions_total{{model="m",service="{service_label}",version="1"}}' in body


# --- logging --------------------------------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_trace_ids_and_extras(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging(NexusSettings(log_json=True, log_level="debug"), "svc", stream=out)
    log = logging.getLogger("nexus.test")
    with tracer().start_as_current_span("work") as span:
        log.info("scored %d points", 3, extra={"model": "m"})
    log.debug("outside")
    inside, outside = [json.loads(line) for line in out.getvalue().splitlines()]
    ctx = span.get_span_context()
    assert inside["message"] == "scored 3 points"
    assert (inside["level"], inside["logger"], inside["service"]) == ("INFO", "nexus.test", "svc")
    assert inside["trace_id"] == f"{ctx.trace_id:032x}"
    assert inside["span_id"] == f"{ctx.span_id:016x}"
    assert inside["model"] == "m"
    assert inside["ts"].endswith("+00:00")
    assert (outside["trace_id"], outside["level"]) == ("", "DEBUG")


def test_json_lines_hold_exceptions(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging(NexusSettings(log_json=True), "svc", stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("nexus.test").exception("failed")
    line = json.loads(out.getvalue())
    assert "ValueError: boom" in line["exception"]


def test_setup_logging_is_idempotent_and_plain_on_request(root_logger: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(NexusSettings(log_json=True), "svc", stream=first)
    setup_logging(NexusSettings(log_json=False), "svc", stream=second)
    logging.getLogger("nexus.test").warning("plain %s", "text")
    assert first.getvalue() == ""
    assert second.getvalue().rstrip().endswith("WARNING nexus.test: plain text")
