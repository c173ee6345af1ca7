"""Anomaly scoring throughput: in-process scikit-learn vs. gRPC, the gateway and the NATS stream.

One run starts the real platform (embedded NATS, the anomaly service and the gateway as separate
processes, as `nexus up` does), trains an Isolation Forest through the API, and measures points
scored per second four ways, each as a ratio to the in-process baseline:

- in-process: scikit-learn's `IsolationForest.score_samples` on the same data, no service;
- gRPC: `ScorePoints` calls of `--batch` points, `--concurrency` in flight;
- gateway: the same calls as HTTP/JSON through the gateway;
- stream: points published on `nexus.metrics.<source>`, bound to the model, until every one is
  acknowledged by the service's consumer (the Python publisher is part of this path);
- drain: the service alone on the stream: a backlog published while it is stopped, timed from
  its restart until it has acknowledged every point.

Usage: python bench/anomaly_throughput.py [--batch 1024] [--seconds 5] [--concurrency 4]
Writes bench/results/anomaly_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
from nats.js.client import JetStreamContext
from sklearn.ensemble import IsolationForest

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as pb_grpc
from nexus.api.metrics.v1.events_pb2 import MetricPoint
from nexus.common.auth import open_key_store
from nexus.common.events import EventBus
from nexus.common.launcher import Platform
from nexus.common.nats import connect
from nexus.common.settings import NexusSettings

RESULTS = Path(__file__).resolve().parent / "results" / "anomaly_throughput.json"
FEATURES = 8
TRAIN_ROWS = 5000
MODEL = "bench-iforest"
SOURCE = "bench-source"


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


async def publish_points(bus: EventBus, rows: np.ndarray) -> None:
    """Publishes rows as metric points of SOURCE, 500 acknowledged publishes at a time."""
    values = rows.tolist()
    for start in range(0, len(values), 500):
        chunk = enumerate(values[start : start + 500], start=start)
        await asyncio.gather(
            *(
                bus.publish(
                    f"nexus.metrics.{SOURCE}", MetricPoint(source=SOURCE, id=str(i), values=v)
                )
                for i, v in chunk
            )
        )


async def acked_through(js: JetStreamContext, last: int) -> None:
    """Waits until the service's consumer has acknowledged every message up to `last`."""
    # The state is the server's: polling it is the only way to see it.
    while (await js.consumer_info("METRICS", "anomaly-stream")).ack_floor.stream_seq < last:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def via_stream(nats_url: str, rows: np.ndarray) -> float:
    """Points/s of the stream: publish every point, wait until the consumer acknowledged all."""
    nc = await connect(NexusSettings(nats_url=nats_url), "bench-publisher")
    js = nc.jetstream()
    last = (await js.stream_info("METRICS")).state.last_seq + len(rows)
    started = time.perf_counter()
    await publish_points(EventBus(nc, "bench"), rows)
    await acked_through(js, last)
    elapsed = time.perf_counter() - started
    await nc.drain()
    return len(rows) / elapsed


async def drain(platform: Platform, nats_url: str, rows: np.ndarray) -> float:
    """Points/s of the service alone: a backlog waits while it is stopped, then it drains it."""
    service = platform.children[0]
    service.process.terminate()
    service.process.wait(30)
    platform.children.remove(service)
    nc = await connect(NexusSettings(nats_url=nats_url), "bench-publisher")
    js = nc.jetstream()
    await publish_points(EventBus(nc, "bench"), rows)
    last = (await js.stream_info("METRICS")).state.last_seq
    await platform.start_services()  # returns when the service is SERVING
    started = time.perf_counter()
    await acked_through(js, last)
    elapsed = time.perf_counter() - started
    await nc.drain()
    return len(rows) / elapsed


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


async def run(args: argparse.Namespace) -> dict[str, float]:
    """Starts the platform, measures all four paths, stops the platform."""
    train, batch = data(TRAIN_ROWS, 0), data(args.batch, 1)
    results = {"in_process": in_process(batch, train, args.seconds)}
    with tempfile.TemporaryDirectory() as tmp:
        platform = Platform(Path(tmp), nats_port=0, gateway_port=0, services=["anomaly"])
        try:
            nats_url = platform.start_nats()
            await platform.start_services()
            await platform.start_gateway()
            key = await admin_key(nats_url)
            port = platform.children[0].port
            await prepare(port, key, train)
            results["grpc"] = await via_grpc(port, key, batch, args.seconds, args.concurrency)
            results["gateway"] = await via_gateway(
                platform.gateway_url, key, batch, args.seconds, args.concurrency
            )
            results["stream"] = await via_stream(nats_url, data(args.stream_points, 2))
            results["drain"] = await drain(platform, nats_url, data(args.stream_points, 3))
        finally:
            platform.stop()
    return results


def report(results: dict[str, float], args: argparse.Namespace) -> dict[str, object]:
    """Prints the table and returns what goes into the JSON file."""
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


def main() -> None:
    """Runs the benchmark and writes the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--stream-points", type=int, default=20_000)
    args = parser.parse_args()
    summary = report(asyncio.run(run(args)), args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
