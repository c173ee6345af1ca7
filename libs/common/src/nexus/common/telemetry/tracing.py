"""OpenTelemetry traces: one provider per process, W3C context over gRPC metadata and headers.

`setup_tracing` installs the process's tracer provider (exporting over OTLP/gRPC when an endpoint
is configured); `TracingInterceptor` puts every served call in a SERVER span that continues the
caller's trace; `client_metadata` / `client_interceptors` carry the current trace to the services
a process calls; `inject_headers` / `extract_context` do the same for NATS headers and HTTP.
"""

# grpc ships no type stubs: its classes are `Any` to mypy, so subclassing them is allowed here.
# mypy: allow-subclassing-any

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from nexus.common.grpc_handlers import Context, status_of, wrap_handler
from nexus.common.settings import NexusSettings

log = logging.getLogger(__name__)

TRACER_NAME = "nexus.common.telemetry"

# Server-side codes that mean the server failed (OpenTelemetry's gRPC conventions); the others
# (INVALID_ARGUMENT, NOT_FOUND, ...) are the caller's mistakes and leave the span's status unset.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_lock = threading.Lock()
_exporters: set[int] = set()


def setup_tracing(
    service_name: str, settings: NexusSettings, *, exporter: SpanExporter | None = None
) -> None:
    """Installs the process's tracer provider; safe to call again.

    The first call that has somewhere to send spans (`settings.otlp_endpoint`, or `exporter`)
    sets the global provider (resource `service.name`, `deployment.environment`), exporting in
    batches over OTLP/gRPC when the endpoint is set; without either, spans stay no-ops.
    OpenTelemetry allows one global provider per process, so a later call only adds `exporter`.

    Args:
        service_name: The `service.name` resource attribute.
        settings: Shared settings (OTLP endpoint, environment).
        exporter: An extra exporter fed span by span, such as the SDK's InMemorySpanExporter in
            tests. Added once however often it is passed.
    """
    if exporter is None and not settings.otlp_endpoint:
        # Nowhere to send spans: keep OpenTelemetry's no-op tracer, which still carries the
        # caller's trace context on to gRPC calls and NATS events, at a fraction of the cost.
        return
    with _lock:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = _new_provider(service_name, settings)
            trace.set_tracer_provider(provider)
        if exporter is not None and id(exporter) not in _exporters:
            _exporters.add(id(exporter))
            provider.add_span_processor(SimpleSpanProcessor(exporter))


def _new_provider(service_name: str, settings: NexusSettings) -> TracerProvider:
    resource = Resource.create(
        {"service.name": service_name, "deployment.environment": settings.environment}
    )
    provider = TracerProvider(resource=resource)
    if settings.otlp_endpoint:
        # Imported here: the exporter pulls in its own gRPC machinery, needed only when exporting.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        provider.add_span_processor(BatchSpanProcessor(otlp))
        log.info("exporting traces to %s", settings.otlp_endpoint)
    return provider


def tracer() -> trace.Tracer:
    """The tracer Nexus's own spans come from."""
    return trace.get_tracer(TRACER_NAME)


def inject_headers(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Writes the current trace context (`traceparent`, ...) into `headers`; returns them."""
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str]) -> OtelContext:
    """The trace context that `headers` carry (an empty one when they carry none)."""
    return propagate.extract(headers)


def metadata_dict(metadata: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """gRPC metadata as a dict of its text entries (the first value of each key)."""
    result: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            result.setdefault(key.lower(), value)
    return result


def client_metadata() -> list[tuple[str, str]]:
    """The current trace context as metadata for an outgoing gRPC call."""
    return list(inject_headers({}).items())


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Runs every call in a SERVER span named by its method, child of the caller's span."""

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        """Wraps the method's handler so that each call runs in its span."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        carrier = metadata_dict(handler_call_details.invocation_metadata)
        if not _recording() and carrier.keys().isdisjoint(propagate.get_global_textmap().fields):
            # No span is recorded and the caller sent no context to carry on: the span would
            # be the invalid no-op span that is current anyway.
            return handler
        method = handler_call_details.method.lstrip("/")
        parent = extract_context(carrier)
        return wrap_handler(handler, lambda context: _server_span(method, parent, context))


def _recording() -> bool:
    """Whether spans are recorded: `setup_tracing` installed the SDK's provider."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


@asynccontextmanager
async def _server_span(method: str, parent: OtelContext, context: Context) -> AsyncIterator[None]:
    service, _, name = method.partition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    with tracer().start_as_current_span(
        method,
        context=parent,
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            _record_outcome(span, error, context)


def _record_outcome(span: trace.Span, error: BaseException | None, context: Context) -> None:
    code = status_of(error, context)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        # The trace is for operators, so the exception is recorded there in full; what the
        # client sees is decided by the error interceptor, never here.
        span.record_exception(error)
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))


class _TraceMetadata:
    """Adds the current trace context to an outgoing call's metadata."""

    @staticmethod
    def _details(details: Any) -> Any:
        metadata = list(details.metadata or ())
        if any(key == "traceparent" for key, _ in metadata):
            return details
        return details._replace(metadata=grpc.aio.Metadata(*metadata, *client_metadata()))


class _UnaryUnary(_TraceMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_TraceMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_TraceMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


class _StreamStream(_TraceMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


def client_interceptors() -> list[Any]:
    """Interceptors for a `grpc.aio` channel that send the caller's trace context on every call.

    One per call kind, because a channel files each interceptor under the first kind it
    implements: `grpc.aio.insecure_channel(target, interceptors=client_interceptors())`.
    """
    return [_UnaryUnary(), _UnaryStream(), _StreamUnary(), _StreamStream()]
