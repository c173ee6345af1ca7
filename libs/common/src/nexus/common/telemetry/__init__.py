"""Telemetry: OpenTelemetry traces, Prometheus metrics and structured logs, set up one way.

A service calls `setup_logging` and `setup_tracing` at start, installs `TracingInterceptor` and
`MetricsInterceptor` on its server (outermost, so that they see auth failures and mapped errors)
and serves metrics with `start_metrics_server`. Clients send their trace along with
`client_metadata()` or `client_interceptors()`; NATS publishers with `inject_headers`.
"""

from nexus.common.telemetry.logging import JsonFormatter, setup_logging
from nexus.common.telemetry.metrics import (
    FREE_PORT,
    MetricsInterceptor,
    observe_batch,
    observe_workflow_step,
    record_cache_request,
    record_event,
    record_model_eviction,
    record_model_load,
    record_predictions,
    record_trigger,
    record_workflow_run,
    set_models_loaded,
    set_workflow_queue,
    start_metrics_server,
)
from nexus.common.telemetry.tracing import (
    TracingInterceptor,
    client_interceptors,
    client_metadata,
    extract_context,
    inject_headers,
    setup_tracing,
    tracer,
)

__all__ = [
    "FREE_PORT",
    "JsonFormatter",
    "MetricsInterceptor",
    "TracingInterceptor",
    "client_interceptors",
    "client_metadata",
    "extract_context",
    "inject_headers",
    "observe_batch",
    "observe_workflow_step",
    "record_cache_request",
    "record_event",
    "record_model_eviction",
    "record_model_load",
    "record_predictions",
    "record_trigger",
    "record_workflow_run",
    "set_models_loaded",
    "set_workflow_queue",
    "setup_logging",
    "setup_tracing",
    "start_metrics_server",
    "tracer",
]
