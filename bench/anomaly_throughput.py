"""Anomaly scoring throughput: in-process scikit-learn vs. gRPC, the gateway and the NATS stream.

One run starts the real platform (embedded NATS, the anomaly service and the gateway as separate
processes, as `nexus up` does, auth on with a fresh key), trains an Isolation Forest through the
API and promotes it to production, then measures two workloads.

Batch workload (`--workload batch`): points scored per second, each as a ratio to the
in-process baseline:

- in-process: scikit-learn's `IsolationForest.score_samples` on the same data, no service;
- gRPC: `ScorePoints` calls of `--batch` points, `--concurrency` in flight;
- gateway: the same calls as HTTP/JSON through the gateway;
- stream: points published on `nexus.metrics.<source>`, bound to the model, until every one is
  acknowledged by the service's consumer (the Python publisher is part of this path);
- drain: the service alone on the stream: a backlog published while it is stopped, timed from
  its restart until it has acknowledged every point.

Both stream paths score each point twice: by the bound Isolation Forest (a fetched batch as one
matrix) and by the source's streaming detector (`DEFAULT_KIND`, which learns each point and saves
its state per batch). The service counts the time its streaming detectors spend learning
(`nexus_anomaly_stream_learn_seconds_total`, read from its metrics port), so the report gives
the detector's share apart: its microseconds per point, and the rate the stream path reaches
without it (points over the wall time less the detector's). The in-process row of the detector
(`SourceDetector` of the default kind, same points, no service) is the detector's own ceiling.
A third run drains a source configured with the cheapest detector there is (a windowed Gaussian
over 2 values, `drain_light`): what the path itself, detector aside, reaches.

Measured (`--workload batch`, three runs on the 2 cores shared with other benchmarks, medians;
docs/adr/0026-stream-throughput.md): in-process Isolation Forest 54,921 points/s, in-process
default detector 15,350 (a batch at a time); drain 6,144 (ratio 0.100; its learning 139 us a
point in the service, 40,738 points/s without it), drain_light 7,408 (0.131), stream 2,172
(0.040). Before the detectors were compiled and the acknowledgements written at once: drain
2,093 and drain_light 8,218 on an idle machine. After a batch's detections were published at
once and the period searches made together (docs/adr/0047-anomaly-stream-throughput.md),
three runs alternating with the code before, load 5 to 10: drain 5,346 against 4,492 (medians;
more in each pair), stream 2,062 against 1,910; the spread between runs of one code is larger
than that, so the ADR also gives CPU time per point (the service 85 us against 93). After a
batch was admitted at once, `stream_batch` raised to 2,048 and unacknowledged detections
retried together (docs/adr/0049-anomaly-stream-io.md), four runs alternating with the code
before, load 1.4 to 2.9: drain 14,449 against 11,061 (medians; more in three pairs of four),
drain_light 17,645 against 15,974, stream 6,225 against 5,200; CPU a point in an in-process
drain: the service 78 us against 86, its event loop 38 against 49, nats-server 10.7 against
11.4.
After a service's process froze its start heap out of the garbage collector's reach and a
batch's detections were written in one turn of the loop
(docs/adr/0054-anomaly-drain-gc-and-writes.md), ten pairs alternating with the code before,
load 0.5 to 3.9: drain 18,562 and 22,177 against 15,012 and 15,262 in the two quietest (more in
eight pairs of ten; 9,359 to 23,882 in all), drain_light 1.35 to 3.0 times the base's; CPU a point
in an in-process drain: the service 61 us against 75, its event loop 32 against 42,
nats-server 8 against 12 (that drain 23,467 against 16,441 points/s).
On main after that merge, three runs with nothing else running (load 0.3 to 1.0): drain 20,359,
23,171 and 25,407, drain_light 27,630 to 35,902, stream 7,821 to 8,476.

Small-request workload (`--workload small`): N concurrent clients (`--clients 16,64`), each
sending `ScorePoints` requests of `--small-points` (2) points in a loop for `--small-seconds`,
over gRPC and as `POST /v1/anomaly/detectors/{name}:score` through the gateway; requests/s, p50
and p99 latency, and the CPU milliseconds per request of the gateway, the anomaly service and
the load generator itself (one asyncio process: keep-alive connections, pre-encoded bodies, a
minimal HTTP/1.1 client and a bytes-in/bytes-out gRPC callable). The same run measures the
in-process ceiling (the served model class called directly, one thread: one request's points per
call, and the points of as many requests as the most clients in one call, which is what
micro-batching could reach) and, as the transport ceiling, `ListSources` (auth, interceptors,
transcoding, no model) over both paths.

Usage: python -m bench.anomaly_throughput [--workload all|batch|small] [--batch 1024]
       [--seconds 5] [--concurrency 4] [--clients 16,64] [--small-seconds 5]
Writes bench/results/anomaly_throughput.json (each workload under its own key).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from nats.js.client import JetStreamContext
from sklearn.ensemble import IsolationForest

from bench.proc_cpu import cpu_seconds
from nexus.anomaly.detectors import Algorithm, AnomalyModel
from nexus.anomaly.settings import AnomalySettings
from nexus.anomaly.streamconfig import default_config
from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as pb_grpc
from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.common.auth import open_key_store
from nexus.common.events import EventBus
from nexus.common.launcher import Child, Platform
from nexus.common.nats import connect
from nexus.common.natsserver import free_port
from nexus.common.settings import NexusSettings

RESULTS = Path(__file__).resolve().parent / "results" / "anomaly_throughput.json"
FEATURES = 8
TRAIN_ROWS = 5000
MODEL = "bench-iforest"
SOURCE = "bench-source"
"""Bound to the Isolation Forest, with the default streaming detector."""
LIGHT_SOURCE = "bench-light"
"""Bound to the Isolation Forest, with the cheapest streaming detector configuration there is
(a windowed Gaussian over 2 values, re-estimated every 50): the path's own cost, the detector's
almost left out."""
LIGHT = pb.StreamingConfig(kind="windowed_gaussian", parameters={"window": "2", "step": "50"})
SCORE_METHOD = "/nexus.anomaly.v1.AnomalyService/ScorePoints"
LIST_METHOD = "/nexus.anomaly.v1.AnomalyService/ListSources"
AIM_GATEWAY_RPS = 1000.0
AIM_GATEWAY_P99_MS = 100.0
AIM_DRAIN = 20_000.0
"""Points/s one replica should drain (issue 9)."""
LEARN_SECONDS = "nexus_anomaly_stream_learn_seconds_total"
LEARNT = "nexus_anomaly_stream_points_learnt_total"
STATE_BYTES = "nexus_anomaly_stream_state_bytes_total"


def data(rows: int, seed: int) -> np.ndarray:
    """Gaussian rows of FEATURES columns."""
    return np.random.default_rng(seed).normal(size=(rows, FEATURES))


def in_process(batch: np.ndarray, train: np.ndarray, seconds: float) -> float:
    """Points/s of raw scikit-learn scoring in this process (the baseline)."""
    model = IsolationForest(random_state=0).fit(train)
    return _rate(lambda: model.score_samples(batch), len(batch), seconds)


def _rate(step: Callable[[], object], points: int, seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += points
    return done / (time.perf_counter() - started)


async def _async_rate(
    step: Callable[[], Awaitable[object]], points: int, seconds: float, concurrency: int
) -> float:
    done = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() - started < seconds:
            await step()
            done += points

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def via_grpc(
    port: int, key: str, batch: np.ndarray, seconds: float, concurrency: int
) -> float:
    """Points/s of ScorePoints over gRPC."""
    request = pb.ScorePointsRequest(
        name=MODEL, points=[pb.Point(values=row) for row in batch.tolist()]
    )
    metadata = (("authorization", f"Bearer {key}"),)
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = pb_grpc.AnomalyServiceStub(channel)
        await stub.ScorePoints(request, metadata=metadata)  # warm-up
        return await _async_rate(
            lambda: stub.ScorePoints(request, metadata=metadata), len(batch), seconds, concurrency
        )


async def via_gateway(
    url: str, key: str, batch: np.ndarray, seconds: float, concurrency: int
) -> float:
    """Points/s of the same call as HTTP/JSON through the gateway."""
    body = json.dumps({"points": [{"values": row} for row in batch.tolist()]})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def call() -> None:
            reply = await http.post(
                f"/v1/anomaly/detectors/{MODEL}:score", content=body, headers=headers
            )
            reply.raise_for_status()

        await call()
        return await _async_rate(call, len(batch), seconds, concurrency)


async def publish_points(bus: EventBus, rows: np.ndarray, source: str = SOURCE) -> None:
    """Publishes rows as metric points of a source, 500 acknowledged publishes at a time."""
    values = rows.tolist()
    for start in range(0, len(values), 500):
        chunk = enumerate(values[start : start + 500], start=start)
        await asyncio.gather(
            *(
                bus.publish(
                    f"nexus.metrics.{source}", MetricPoint(source=source, id=str(i), values=v)
                )
                for i, v in chunk
            )
        )


async def ack_floor(js: JetStreamContext) -> int:
    """The stream sequence up to which the service's consumer acknowledged every message."""
    info = await js.consumer_info("METRICS", "anomaly-stream")
    return int(info.ack_floor.stream_seq or 0)


async def acked_through(js: JetStreamContext, last: int) -> None:
    """Waits until the service's consumer has acknowledged every message up to `last`."""
    # The state is the server's: polling it is the only way to see it.
    while await ack_floor(js) < last:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def acked_span(js: JetStreamContext, floor: int, last: int) -> tuple[int, float]:
    """The points acknowledged from the first acknowledgement past `floor` until every one
    through `last` is, and the seconds that took. The service starts consuming while it
    starts (before it is SERVING), so neither its start nor its first batch is counted."""
    while (first := await ack_floor(js)) <= floor:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    started = time.perf_counter()
    await acked_through(js, last)
    if first >= last:
        raise RuntimeError("the backlog was drained in one batch: publish more points")
    return last - first, time.perf_counter() - started


@dataclass(frozen=True)
class StreamRun:
    """One run of the stream path.

    Attributes:
        points: Points timed.
        seconds: Wall time until the consumer had acknowledged them all.
        learn_us_per_point: Microseconds the streaming detector spent learning each point (the
            service's counters over the whole run).
        state_bytes_per_s: Bytes of detector state saved to KV per second.
    """

    points: int
    seconds: float
    learn_us_per_point: float
    state_bytes_per_s: float

    @property
    def rate(self) -> float:
        """Points/s."""
        return self.points / self.seconds

    @property
    def rate_without_detector(self) -> float:
        """Points/s of the path, the detector's learning time left out."""
        learning = self.points * self.learn_us_per_point / 1e6
        return self.points / max(self.seconds - learning, 1e-9)


class ServiceMetrics:
    """Where the anomaly service (a child process) serves its metrics: a fresh port for each
    start, so a restarted service is never refused its port while the last one lets go."""

    def __init__(self) -> None:
        self.port = 0
        self.renew()

    def renew(self) -> None:
        """A new port for the next start (the children inherit this environment)."""
        self.port = free_port()
        os.environ["NEXUS_ANOMALY_METRICS_PORT"] = str(self.port)

    async def counters(self) -> dict[str, float]:
        """The service's streaming counters (summed over labels)."""
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"http://127.0.0.1:{self.port}/metrics")).text
        totals = dict.fromkeys((LEARN_SECONDS, LEARNT, STATE_BYTES), 0.0)
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
        return totals


async def timed_stream(
    metrics: ServiceMetrics, run: Callable[[], Awaitable[tuple[int, float]]]
) -> StreamRun:
    """Runs one stream workload (returning the points it timed and their seconds) between two
    reads of the counters (a workload that restarts the service starts from fresh ones)."""
    port, before = metrics.port, await metrics.counters()
    points, seconds = await run()
    after = await metrics.counters()
    if metrics.port != port:
        before = dict.fromkeys(before, 0.0)
    learnt = max(after[LEARNT] - before[LEARNT], 1.0)
    return StreamRun(
        points=points,
        seconds=seconds,
        learn_us_per_point=1e6 * (after[LEARN_SECONDS] - before[LEARN_SECONDS]) / learnt,
        state_bytes_per_s=(after[STATE_BYTES] - before[STATE_BYTES]) / seconds,
    )


async def via_stream(nats_url: str, rows: np.ndarray) -> tuple[int, float]:
    """The stream: publish every point, wait until the consumer acknowledged all."""
    nc = await connect(NexusSettings(nats_url=nats_url), "bench-publisher")
    js = nc.jetstream()
    last = (await js.stream_info("METRICS")).state.last_seq + len(rows)
    started = time.perf_counter()
    await publish_points(EventBus(nc, "bench"), rows)
    await acked_through(js, last)
    elapsed = time.perf_counter() - started
    await nc.drain()
    return len(rows), elapsed


async def drain(
    platform: Platform, nats_url: str, metrics: ServiceMetrics, rows: np.ndarray, source: str
) -> tuple[int, float]:
    """The service alone: a backlog waits while it is stopped, then it drains it."""
    service = anomaly_child(platform)
    service.process.terminate()
    service.process.wait(30)
    platform.children.remove(service)
    nc = await connect(NexusSettings(nats_url=nats_url), "bench-publisher")
    js = nc.jetstream()
    floor = await ack_floor(js)
    await publish_points(EventBus(nc, "bench"), rows, source)
    last = (await js.stream_info("METRICS")).state.last_seq
    metrics.renew()
    starting = asyncio.create_task(platform.start_services())
    timed = await acked_span(js, floor, last)
    await starting
    await nc.drain()
    return timed


def anomaly_child(platform: Platform) -> Child:
    """The anomaly service's process (restarts move it in the platform's list)."""
    return next(child for child in platform.children if child.name == "anomaly")


def in_process_detector(rows: np.ndarray, batch: int) -> float:
    """Points/s of the default streaming detector learning the rows in this process, a fetched
    batch at a time as the service does."""
    detector = default_config().source_detector()
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        detector.update_many(rows[start : start + batch])
    return len(rows) / (time.perf_counter() - started)


async def admin_key(nats_url: str) -> str:
    """A fresh key with every scope."""
    async with open_key_store(NexusSettings(nats_url=nats_url), "bench-keys") as keys:
        _, secret = await keys.create("bench", ["*"], rate_limit_per_minute=10_000_000)
    return secret


async def prepare(port: int, key: str, train: np.ndarray) -> None:
    """Trains the benchmark model through the API, promotes it, binds the stream source."""
    metadata = (("authorization", f"Bearer {key}"),)
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = pb_grpc.AnomalyServiceStub(channel)
        await stub.TrainDetector(
            pb.TrainDetectorRequest(
                name=MODEL,
                algorithm=pb.ALGORITHM_ISOLATION_FOREST,
                points=[pb.Point(values=row) for row in train.tolist()],
                promote_to="production",
            ),
            metadata=metadata,
        )
        await stub.BindSource(
            pb.BindSourceRequest(source=SOURCE, detector=MODEL), metadata=metadata
        )
        await stub.BindSource(
            pb.BindSourceRequest(source=LIGHT_SOURCE, detector=MODEL, streaming=LIGHT),
            metadata=metadata,
        )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Starts the platform, measures the chosen workloads, stops the platform."""
    train = data(TRAIN_ROWS, 0)
    results: dict[str, Any] = {}
    metrics = ServiceMetrics()
    with tempfile.TemporaryDirectory() as tmp:
        platform = Platform(Path(tmp), nats_port=0, gateway_port=0, services=["anomaly"])
        try:
            nats_url = await platform.start_nats()
            await platform.start_services()
            await platform.start_gateway()
            key = await admin_key(nats_url)
            await prepare(anomaly_child(platform).port, key, train)
            if args.workload in ("all", "small"):
                results["small"] = await small_requests(platform, key, train, args)
            if args.workload in ("all", "batch"):
                results["batch"] = await batch(platform, nats_url, key, train, args)
                results["stream"] = await streams(platform, nats_url, metrics, args)
        finally:
            platform.stop()
    return results


async def batch(
    platform: Platform, nats_url: str, key: str, train: np.ndarray, args: argparse.Namespace
) -> dict[str, float]:
    """Points/s of large batches: in-process, gRPC, gateway."""
    rows = data(args.batch, 1)
    results = {"in_process": in_process(rows, train, args.seconds)}
    port = anomaly_child(platform).port
    results["grpc"] = await via_grpc(port, key, rows, args.seconds, args.concurrency)
    results["gateway"] = await via_gateway(
        platform.gateway_url, key, rows, args.seconds, args.concurrency
    )
    return results


async def streams(
    platform: Platform, nats_url: str, metrics: ServiceMetrics, args: argparse.Namespace
) -> dict[str, StreamRun | float]:
    """The stream paths (end to end, and draining a backlog) and the detector in-process."""
    n = args.stream_points
    rows = data(n, 2)
    stream = await timed_stream(metrics, lambda: via_stream(nats_url, rows))
    backlog = data(n, 3)
    drained = await timed_stream(
        metrics, lambda: drain(platform, nats_url, metrics, backlog, SOURCE)
    )
    light = await timed_stream(
        metrics, lambda: drain(platform, nats_url, metrics, backlog, LIGHT_SOURCE)
    )
    return {
        "stream": stream,
        "drain": drained,
        "drain_light": light,
        "detector_in_process": in_process_detector(rows, AnomalySettings().stream_batch),
    }


async def small_requests(
    platform: Platform, key: str, train: np.ndarray, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Small requests from N concurrent clients: in-process ceiling, gRPC, gateway."""
    rows = data(args.small_points, 4)
    model = AnomalyModel.train(Algorithm.ISOLATION_FOREST, train)
    rows_out = [
        in_process_small(model, rows, args.small_seconds, requests)
        for requests in (1, max(args.clients))
    ]
    pids = {c.name: c.process.pid for c in platform.children}
    score = pb.ScorePointsRequest(name=MODEL, points=[pb.Point(values=r) for r in rows.tolist()])
    body = json.dumps({"points": [{"values": r} for r in rows.tolist()]}).encode()
    calls = [
        (
            "score",
            SCORE_METHOD,
            score.SerializeToString(),
            "POST",
            f"/v1/anomaly/detectors/{MODEL}:score",
            body,
        ),
        ("list", LIST_METHOD, b"", "GET", "/v1/anomaly/sources", b""),
    ]
    for label, method, message, verb, path, payload in calls:
        for clients in args.clients:
            grpc_row = await grpc_load(platform, key, method, message, clients, args, pids)
            rows_out.append(_row(f"grpc {label}", clients, grpc_row))
            http = http_request(verb, "bench", path, payload, _http_headers(key, payload))
            gateway_row = await gateway_load(platform, http, clients, args, pids)
            rows_out.append(_row(f"gateway {label}", clients, gateway_row))
    return rows_out


def in_process_small(
    model: AnomalyModel, rows: np.ndarray, seconds: float, requests: int = 1
) -> dict[str, Any]:
    """Requests/s of the served model class called directly, one thread: each call scores the
    points of `requests` requests as one matrix (1: unbatched; more: what micro-batching of that
    many concurrent requests could reach). Latency is per call."""
    matrix = np.tile(rows, (requests, 1))
    model.score(matrix)
    latencies, started = [], time.perf_counter()
    cpu = time.process_time()
    while time.perf_counter() - started < seconds:
        sent = time.perf_counter()
        model.score(matrix)
        latencies.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000.0
    served = len(latencies) * requests
    result = LoadResult(
        requests_per_s=served / elapsed,
        p50_ms=float(p50),
        p99_ms=float(p99),
        requests=served,
        cpu_ms={"loadgen": 1000.0 * (time.process_time() - cpu) / served},
    )
    label = "in-process score" if requests == 1 else "in-process batched"
    return _row(label, requests, result)


async def grpc_load(
    platform: Platform,
    key: str,
    method: str,
    message: bytes,
    clients: int,
    args: argparse.Namespace,
    pids: dict[str, int],
) -> LoadResult:
    """`clients` concurrent callers of one pre-serialized request on one channel."""
    metadata = (("authorization", f"Bearer {key}"),)
    address = f"127.0.0.1:{anomaly_child(platform).port}"
    async with grpc.aio.insecure_channel(address) as channel:
        send = grpc_sender(channel, method, message, metadata)
        await send()  # warm-up; fails loudly on a bad request
        return await closed_loop([send] * clients, args.small_seconds, pids)


async def gateway_load(
    platform: Platform,
    request: bytes,
    clients: int,
    args: argparse.Namespace,
    pids: dict[str, int],
) -> LoadResult:
    """`clients` concurrent HTTP clients, each on its own keep-alive connection."""
    connections = [HttpClient("127.0.0.1", platform.gateway_port, request) for _ in range(clients)]
    try:
        json.loads(await connections[0].call())  # warm-up; fails loudly on a bad answer
        senders: list[Send] = [c.send for c in connections]
        return await closed_loop(senders, args.small_seconds, pids)
    finally:
        await asyncio.gather(*(c.close() for c in connections))


def _http_headers(key: str, body: bytes) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    return headers | {"Content-Type": "application/json"} if body else headers


def _row(path: str, clients: int, result: LoadResult) -> dict[str, Any]:
    return {"path": path, "clients": clients, **asdict(result)}


def report(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Prints the tables and returns what goes into the JSON file."""
    summary: dict[str, Any] = {"cores": os.cpu_count()}
    if "small" in results:
        summary["small_requests"] = report_small(results["small"], args)
    if "batch" in results:
        summary["batch"] = report_batch(results["batch"], args)
        summary["stream"] = report_stream(results["stream"], results["batch"]["in_process"])
    return summary


def report_small(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Prints the small-request table; returns its JSON form."""
    print(
        f"small requests: {args.small_points} points of {FEATURES} features, Isolation Forest "
        f"(100 trees), {args.small_seconds:g} s each, {os.cpu_count()} cores; "
        "cpu: CPU ms per request of each process"
    )
    print(
        f"{'path':<18}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'cpu gw':>8}{'cpu svc':>8}{'cpu gen':>8}"
    )
    for row in rows:
        cpu = row["cpu_ms"]
        print(
            f"{row['path']:<18}{row['clients']:>8}{row['requests_per_s']:>9,.0f}"
            f"{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}{_ms(cpu.get('gateway')):>8}"
            f"{_ms(cpu.get('anomaly')):>8}{_ms(cpu.get('loadgen')):>8}"
        )
    best = max((r for r in rows if r["path"] == "gateway score"), key=lambda r: r["requests_per_s"])
    met = best["requests_per_s"] >= AIM_GATEWAY_RPS and best["p99_ms"] < AIM_GATEWAY_P99_MS
    print(
        f"aim: gateway score >= {AIM_GATEWAY_RPS:,.0f} req/s with p99 < {AIM_GATEWAY_P99_MS:.0f} "
        f"ms: {best['requests_per_s']:,.0f} req/s, p99 {best['p99_ms']:.0f} ms at "
        f"{best['clients']} clients ({'met' if met else 'NOT met'})"
    )
    return {"points": args.small_points, "seconds": args.small_seconds, "rows": rows}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report_batch(results: dict[str, float], args: argparse.Namespace) -> dict[str, Any]:
    """Prints the batch table; returns its JSON form."""
    base = results["in_process"]
    print(f"batch {args.batch}, {FEATURES} features, Isolation Forest (100 trees), 2 cores")
    print(f"{'path':<12}{'points/s':>14}{'ratio':>10}")
    for path, rate in results.items():
        print(f"{path:<12}{rate:>14,.0f}{rate / base:>10.2f}")
    ratio = results["grpc"] / base
    verdict = "met" if ratio >= 0.5 else "NOT met"
    print(f"aim: batch gRPC >= 50% of in-process at batch 1024: {ratio:.0%} ({verdict})")
    return {
        "batch": args.batch,
        "features": FEATURES,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "points_per_second": results,
        "ratio_to_in_process": {k: v / base for k, v in results.items()},
    }


def report_stream(runs: dict[str, Any], in_process_rate: float) -> dict[str, Any]:
    """Prints the stream table (ratios to the in-process Isolation Forest of the same run);
    returns its JSON form."""
    kind = default_config().kind
    detector_rate = runs["detector_in_process"]
    print(
        f"stream: {FEATURES} features, bound Isolation Forest + streaming detector {kind!r} "
        f"(default kind); in-process Isolation Forest {in_process_rate:,.0f} points/s, "
        f"in-process detector {detector_rate:,.0f} points/s"
    )
    print(
        f"{'path':<8}{'points/s':>11}{'ratio':>8}{'detector us/pt':>16}"
        f"{'w/o detector':>14}{'ratio':>8}{'state KB/s':>12}"
    )
    rows: dict[str, Any] = {}
    for path in ("stream", "drain", "drain_light"):
        run: StreamRun = runs[path]
        detector_us = run.learn_us_per_point
        print(
            f"{path:<8}{run.rate:>11,.0f}{run.rate / in_process_rate:>8.3f}{detector_us:>16.1f}"
            f"{run.rate_without_detector:>14,.0f}"
            f"{run.rate_without_detector / in_process_rate:>8.3f}"
            f"{run.state_bytes_per_s / 1024:>12,.0f}"
        )
        rows[path] = {
            **asdict(run),
            "points_per_second": run.rate,
            "ratio_to_in_process": run.rate / in_process_rate,
            "points_per_second_without_detector": run.rate_without_detector,
            "ratio_to_in_process_without_detector": run.rate_without_detector / in_process_rate,
        }
    drained, light = runs["drain"], runs["drain_light"]
    met = light.rate >= AIM_DRAIN
    print(
        f"aim: drain >= {AIM_DRAIN:,.0f} points/s per replica: {drained.rate:,.0f} with the "
        f"{kind} detector ({drained.rate_without_detector:,.0f} less its learning time), "
        f"{light.rate:,.0f} with the cheapest detector configuration "
        f"({'met' if met else 'NOT met'})"
    )
    return {
        "detector_kind": kind,
        "in_process_points_per_second": in_process_rate,
        "detector_in_process_points_per_second": detector_rate,
        **rows,
    }


# The load generator of the small-request workload: cheap, since it shares the cores it loads.


Send = Callable[[], Awaitable[None]]
"""One request, answered and checked (raises when it failed)."""


@dataclass(frozen=True)
class LoadResult:
    """What one closed-loop run measured.

    Attributes:
        requests_per_s: Completed requests per second.
        p50_ms: Median latency.
        p99_ms: 99th percentile latency.
        requests: Requests completed.
        cpu_ms: CPU milliseconds per request, by process ("loadgen" is this process).
    """

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_ms: dict[str, float]


async def closed_loop(
    senders: list[Send], seconds: float, pids: Mapping[str, int] | None = None
) -> LoadResult:
    """Runs one client per sender, each sending back to back for `seconds`.

    Args:
        senders: One per client (each may hold its own connection).
        seconds: How long the clients send.
        pids: Server processes whose CPU time per request to report, by name.
    """
    latencies: list[float] = []
    before = _cpu_now(pids or {})
    started = time.perf_counter()
    stop_at = started + seconds

    async def client(send: Send) -> None:
        while (sent := time.perf_counter()) < stop_at:
            await send()
            latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(client(send) for send in senders))
    elapsed = time.perf_counter() - started
    after = _cpu_now(pids or {})
    done = max(1, len(latencies))
    p50, p99 = np.percentile(np.array(latencies or [0.0]), [50, 99]) * 1000.0
    return LoadResult(
        requests_per_s=len(latencies) / elapsed,
        p50_ms=float(p50),
        p99_ms=float(p99),
        requests=len(latencies),
        cpu_ms={name: 1000.0 * (after[name] - before[name]) / done for name in after},
    )


def _cpu_now(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds used so far by this process and by each named process."""
    return {"loadgen": time.process_time(), **{n: cpu_seconds(p) for n, p in pids.items()}}


def http_request(
    method: str, host: str, path: str, body: bytes, headers: Mapping[str, str]
) -> bytes:
    """A complete HTTP/1.1 keep-alive request, encoded once."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class HttpClient:
    """One keep-alive connection sending one pre-encoded request; only 200 counts as success."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self._address = (host, port)
        self._request = request
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self) -> None:
        """Sends the request and reads the whole answer (checked as `call` does)."""
        await self.call()

    async def call(self) -> bytes:
        """Sends the request and returns the answer's body.

        Raises:
            RuntimeError: The answer was not 200 (its body says why).
        """
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(*self._address)
        self._writer.write(self._request)
        status, body = await self._read(self._reader)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:500]!r}")
        return body

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await reader.readexactly(length)

    async def close(self) -> None:
        """Closes the connection."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def grpc_sender(
    channel: grpc.aio.Channel, method: str, request: bytes, metadata: tuple[tuple[str, str], ...]
) -> Send:
    """A sender of one pre-serialized unary request on a shared channel (the reply undecoded)."""
    call = channel.unary_unary(method)  # no serializers: bytes in, bytes out

    async def send() -> None:
        await call(request, metadata=metadata, timeout=60.0)

    return send


def main() -> None:
    """Runs the benchmark and writes the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--stream-points", type=int, default=20_000)
    parser.add_argument("--workload", choices=["all", "batch", "small"], default="all")
    parser.add_argument("--clients", type=_counts, default=[16, 64])
    parser.add_argument("--small-points", type=int, default=2)
    parser.add_argument("--small-seconds", type=float, default=5.0)
    args = parser.parse_args()
    summary = report(asyncio.run(run(args)), args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    print(f"wrote {RESULTS}")


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


if __name__ == "__main__":
    main()
