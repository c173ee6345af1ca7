"""Traces: a SERVER span per HTTP request, continuing the caller's W3C trace context, and that
context forwarded to the backends in gRPC metadata."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from nexus.common.telemetry import client_metadata

tracer = trace.get_tracer("nexus.gateway")


def start_server_span(method: str, path: str, headers: Mapping[str, str]) -> Span:
    """A SERVER span for one request, child of the incoming `traceparent` if there is one.

    Not made current: the caller does that, since an SSE span outlives the handler.
    """
    # Named by the method alone until the route is known: raw paths would make span names
    # unbounded (every unknown URL its own name).
    return tracer.start_span(
        method,
        context=propagate.extract(headers),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path},
    )


def name_route(span: Span, method: str, template: str, full_method: str) -> None:
    """Names the span after its route once the route is known (low-cardinality names)."""
    service, _, rpc = full_method.strip("/").partition("/")
    span.update_name(f"{method} {template}")
    span.set_attributes({"http.route": template, "rpc.service": service, "rpc.method": rpc})


def finish(span: Span, status: int) -> None:
    """Records the HTTP status (5xx marks the span as an error) and ends the span."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(StatusCode.ERROR)
    span.end()


def outgoing_metadata() -> list[tuple[str, str]]:
    """The current trace context as gRPC metadata (`traceparent`, `tracestate`)."""
    return client_metadata()
