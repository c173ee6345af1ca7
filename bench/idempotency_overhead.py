"""What idempotency keys cost a call: µs per call, each as a ratio to a server without them.

One process starts an embedded nats-server and two real gRPC servers built by `ServiceHost`
(auth off, a servicer that answers at once): one with the idempotency interceptor, as every
service runs, and one without it. Calls are sequential on one channel for `--seconds` each:

- baseline: no interceptor, no key;
- unkeyed: the interceptor installed, no key sent (what every existing client pays);
- keyed: a new key per call (claim with KV create, outcome with compare-and-set);
- replayed: the same key and request again (a failed create and one read, nothing runs).

The modes take turns for `--rounds` rounds (a busy machine slows them alike); each figure is
the median of its rounds.

Usage: python bench/idempotency_overhead.py [--seconds 0.5] [--rounds 15]
Writes bench/results/idempotency_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from nexus.api.anomaly.v1 import anomaly_service_pb2 as pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as pb_grpc
from nexus.common.idempotency import METADATA_KEY, IdempotencyInterceptor
from nexus.common.natsserver import NatsServer
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings, ServiceSettings

RESULTS = Path(__file__).parent / "results" / "idempotency_overhead.json"


class Instant(pb_grpc.AnomalyServiceServicer):
    """Answers at once: what is measured is the plumbing."""

    async def BindSource(self, request: pb.BindSourceRequest, context: Any) -> Any:  # noqa: N802
        return pb.BindSourceResponse()


class WithoutKeys(ServiceHost):
    """The same host without the idempotency interceptor."""

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        chain = super()._interceptors()
        return [i for i in chain if not isinstance(i, IdempotencyInterceptor)]


async def start(kind: type[ServiceHost], common: NexusSettings) -> ServiceHost:
    host = kind("bench", ServiceSettings(), common)
    await host.open()
    servicer = Instant()  # type: ignore[abstract]  # the stubs mark every RPC abstract
    host.add_servicer(pb_grpc.add_AnomalyServiceServicer_to_server, servicer, "bench.Instant")
    await host.start()
    return host


Metadata = Callable[[], tuple[tuple[str, str], ...]]


async def per_call_us(port: int, metadata: Metadata, seconds: float) -> float:
    """Mean µs per sequential BindSource call."""
    request = pb.BindSourceRequest(source="bench", detector="bench")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.AnomalyServiceStub(channel)
        for _ in range(50):  # warm up the channel and the caches
            await stub.BindSource(request)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            await stub.BindSource(request, metadata=metadata())
            calls += 1
        return (time.perf_counter() - started) / calls * 1e6


async def run(seconds: float, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        nats = NatsServer(Path(folder))
        nats.start()
        try:
            common = NexusSettings(nats_url=nats.url, auth_enabled=False, log_json=False)
            plain, keyed = await start(WithoutKeys, common), await start(ServiceHost, common)
            same = str(uuid.uuid4())
            modes: dict[str, tuple[int, Metadata]] = {
                "baseline": (plain.port, lambda: ()),
                "unkeyed": (keyed.port, lambda: ()),
                "keyed": (keyed.port, lambda: ((METADATA_KEY, str(uuid.uuid4())),)),
                "replayed": (keyed.port, lambda: ((METADATA_KEY, same),)),
            }
            samples: dict[str, list[float]] = {name: [] for name in modes}
            for _ in range(rounds):
                for name, (port, meta) in modes.items():
                    samples[name].append(await per_call_us(port, meta, seconds))
            us = {name: statistics.median(values) for name, values in samples.items()}
            for host in (plain, keyed):
                await host.stop()
        finally:
            nats.stop()
    return {
        "seconds_per_round": seconds,
        "rounds": rounds,
        "us_per_call": {name: round(value, 1) for name, value in us.items()},
        "ratio_to_baseline": {name: round(value / us["baseline"], 2) for name, value in us.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    results = asyncio.run(run(args.seconds, args.rounds))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
