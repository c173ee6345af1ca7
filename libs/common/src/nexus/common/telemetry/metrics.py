"""Prometheus metrics: defined once here, in the default registry, and served on a port.

Every service exports the same names, so one dashboard serves them all; the `service` label says
which one. Label values stay low-cardinality: method names, model names and versions, cache
names, never request data.
"""

# grpc ships no type stubs: its classes are `Any` to mypy, so subclassing them is allowed here.
# mypy: allow-subclassing-any

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from nexus.common.grpc_handlers import Context, status_of, wrap_handler

RPC_REQUESTS = Counter(
    "nexus_rpc_requests_total",
    "gRPC calls handled, by final status code.",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "nexus_rpc_duration_seconds",
    "Time from the call reaching the handler to its last response.",
    ["service", "method"],
    # Up to two minutes: LLM generations and training calls are slow by nature.
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RPC_IN_FLIGHT = Gauge(
    "nexus_rpc_in_flight",
    "gRPC calls being handled right now.",
    ["service", "method"],
)
PREDICTIONS = Counter(
    "nexus_predictions_total",
    "Predictions served (one per scored item), by the model version that served them.",
    ["service", "model", "version"],
)
BATCH_SIZE = Histogram(
    "nexus_batch_size",
    "Items per micro-batch handed to a model.",
    ["service", "batcher"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
MODELS_LOADED = Gauge(
    "nexus_models_loaded",
    "Model versions held in memory by the model runtime.",
    ["service"],
)
MODEL_BYTES = Gauge(
    "nexus_model_bytes",
    "Estimated memory of the model versions held by the model runtime.",
    ["service"],
)
MODEL_LOAD_DURATION = Histogram(
    "nexus_model_load_seconds",
    "Time to load one model version (fetch, verify, deserialize).",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MODEL_EVICTIONS = Counter(
    "nexus_model_evictions_total",
    "Model versions the model runtime let go of to stay within its limits.",
    ["service"],
)
CACHE_REQUESTS = Counter(
    "nexus_cache_requests_total",
    "Cache look-ups, by result (hit or miss).",
    ["cache", "result"],
)
EVENTS = Counter(
    "nexus_events_total",
    "NATS events handled, by subject and result (ok, error, retry, ...).",
    ["subject", "result"],
)
WORKFLOW_TRIGGERS = Counter(
    "nexus_workflow_triggers_total",
    "Firings of workflow triggers (events read, cron ticks), by outcome: started, duplicate, "
    "filtered (failed the condition), refused (owner key revoked or narrowed), rejected (dead "
    "letter), missed (cron ticks not run).",
    ["workflow", "trigger", "outcome"],
)
WORKFLOW_RUNS = Counter(
    "nexus_workflow_runs_total",
    "Workflow runs by state reached: STARTED, then SUCCEEDED, FAILED, CANCELLED or TIMED_OUT "
    "(runs in progress: STARTED less the others).",
    ["workflow", "state"],
)
WORKFLOW_STEP_DURATION = Histogram(
    "nexus_workflow_step_seconds",
    "Time from a step's start to its end (waits, retries and backoffs included), by kind and "
    "final state.",
    ["workflow", "kind", "state"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
WORKFLOW_QUEUES = Gauge(
    "nexus_workflow_queue_pending",
    "Messages of an orchestrator queue (run advances, each event trigger's events) not handled "
    "yet: waiting plus delivered and unacknowledged, as the server counts them (sampled; every "
    "replica reports the same).",
    ["queue"],
)

FREE_PORT = -1
"""Pass to `start_metrics_server` to serve on a free port (tests)."""


@functools.lru_cache(maxsize=4096)
def _child(metric: MetricWrapperBase, *values: str) -> Any:
    """The labelled child of a metric, cached: `labels()` takes a lock and builds a key each
    time, which shows in profiles of per-event hot paths. Label values here are bounded
    (services, models, versions, caches), so the cache stays small."""
    return metric.labels(*values)


def record_predictions(service: str, model: str, version: str, n: int = 1) -> None:
    """Counts `n` predictions served by a model version."""
    _child(PREDICTIONS, service, model, version).inc(n)


def observe_batch(service: str, batcher: str, size: int) -> None:
    """Records the size of one micro-batch."""
    _child(BATCH_SIZE, service, batcher).observe(size)


def record_model_load(service: str, seconds: float) -> None:
    """Records the duration of one model load."""
    _child(MODEL_LOAD_DURATION, service).observe(seconds)


def record_model_eviction(service: str) -> None:
    """Counts one model version evicted to stay within the runtime's limits."""
    _child(MODEL_EVICTIONS, service).inc()


def set_models_loaded(service: str, count: int, size_bytes: int) -> None:
    """Sets how many model versions the runtime holds, and their estimated memory."""
    _child(MODELS_LOADED, service).set(count)
    _child(MODEL_BYTES, service).set(size_bytes)


def record_cache_request(cache: str, hit: bool, n: int = 1) -> None:
    """Counts `n` cache lookups as hits or as misses."""
    _child(CACHE_REQUESTS, cache, "hit" if hit else "miss").inc(n)


def record_event(subject: str, result: str) -> None:
    """Counts one handled event; `result` is a short word such as "ok" or "error"."""
    EVENTS.labels(subject=subject, result=result).inc()


def record_trigger(workflow: str, trigger: str, outcome: str, n: int = 1) -> None:
    """Counts `n` firings of a workflow's trigger with one outcome."""
    _child(WORKFLOW_TRIGGERS, workflow, trigger, outcome).inc(n)


def record_workflow_run(workflow: str, state: str) -> None:
    """Counts a run that reached `state` (STARTED, or the state it ended in)."""
    _child(WORKFLOW_RUNS, workflow, state).inc()


def observe_workflow_step(workflow: str, kind: str, state: str, seconds: float) -> None:
    """Records how long one step of a run took, from its start to its end."""
    _child(WORKFLOW_STEP_DURATION, workflow, kind, state).observe(seconds)


def set_workflow_queue(queue: str, pending: int | None) -> None:
    """Sets how many messages a queue holds; None removes its series (the queue is gone)."""
    if pending is None:
        with contextlib.suppress(KeyError):  # never set
            WORKFLOW_QUEUES.remove(queue)
        return
    WORKFLOW_QUEUES.labels(queue).set(pending)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> int:
    """Serves `/metrics` from a background thread.

    Args:
        port: The port; 0 disables the endpoint; `FREE_PORT` (-1) picks a free one.
        addr: The interface to bind.

    Returns:
        The port it serves on, or 0 when disabled.
    """
    if port == 0:
        return 0
    server, _ = start_http_server(max(port, 0), addr=addr)
    return int(server.server_port)


def method_label(full_method: str) -> str:
    """The `method` label: the full method without its leading slash (`pkg.Service/Method`)."""
    return full_method.lstrip("/")


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts, times and gauges every call of a server.

    Args:
        service: The `service` label: the service's short name ("anomaly").
    """

    def __init__(self, service: str) -> None:
        self._service = service
        self._methods: dict[str, _MethodSeries] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        """Wraps the method's handler so that each call is measured."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        series = self._series(handler_call_details.method)
        return wrap_handler(handler, series.measure)

    def _series(self, full_method: str) -> _MethodSeries:
        series = self._methods.get(full_method)
        if series is None:
            series = _MethodSeries(self._service, method_label(full_method))
            self._methods[full_method] = series
        return series


class _MethodSeries:
    """One method's metric children, looked up once rather than on every call."""

    __slots__ = ("_duration", "_in_flight", "_method", "_service")

    def __init__(self, service: str, method: str) -> None:
        self._service = service
        self._method = method
        self._in_flight = _child(RPC_IN_FLIGHT, service, method)
        self._duration = _child(RPC_DURATION, service, method)

    def measure(self, context: Context) -> _Measured:
        """The context manager that measures one call."""
        return _Measured(self, context)

    def done(self, elapsed: float, code: grpc.StatusCode) -> None:
        self._in_flight.dec()
        self._duration.observe(elapsed)
        _child(RPC_REQUESTS, self._service, self._method, code.name).inc()


class _Measured:
    """Counts, times and gauges one call (a plain class: it runs on every call, and a
    generator-based context manager costs several times as much)."""

    __slots__ = ("_context", "_series", "_start")

    def __init__(self, series: _MethodSeries, context: Context) -> None:
        self._series = series
        self._context = context
        self._start = 0.0

    async def __aenter__(self) -> None:
        self._series._in_flight.inc()
        self._start = time.perf_counter()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        elapsed = time.perf_counter() - self._start
        self._series.done(elapsed, status_of(error, self._context))
