"""The gateway's event loop while large bodies are parsed: /healthz latency under N concurrent
bodies just under the body limit, with large bodies transcoded on worker threads by the yielding
JSON loader (the default) and inline on the event loop (`offload_bytes` above the limit, as
before), plus the parse itself (json.loads vs the yielding loader).

The gateway runs in this process under uvicorn (auth off) in front of an address where nothing
listens, so each request is read, transcoded and then answered 503 at once: the transcoding is
all there is to measure. A thread polls /healthz with its own client and clock.

Usage: python bench/gateway_large_bodies.py [--bodies 3] [--mb 8] [--rounds 3]
Writes bench/results/gateway_large_bodies.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from nexus.gateway import GatewayServer, GatewaySettings, build_app
from nexus.gateway.jsonload import IncrementalLoader

RESULTS = Path(__file__).resolve().parent / "results" / "gateway_large_bodies.json"
MB = 1024 * 1024


def body(limit: int) -> bytes:
    """A score request just under `limit` bytes: points of four values."""
    point = b'{"values":[0.123456,1.234567,2.345678,3.456789]}'
    return b'{"points":[' + b",".join([point] * ((limit - 100) // (len(point) + 1))) + b"]}"


class Prober(threading.Thread):
    """GET /healthz in a loop from its own thread; keeps every latency."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                client.get("/healthz").raise_for_status()
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.02)


async def round_trip(settings: GatewaySettings, payload: bytes, bodies: int) -> dict[str, float]:
    """One round: `bodies` concurrent POSTs while the prober polls /healthz."""
    server = GatewayServer(build_app(settings), settings)
    url = await server.start()
    prober = Prober(url)
    prober.start()
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        replies = await asyncio.gather(
            *(
                client.post(
                    "/v1/anomaly/detectors/bench:score",
                    content=payload,
                    headers={"content-type": "application/json"},
                )
                for _ in range(bodies)
            )
        )
    elapsed = time.perf_counter() - started
    prober.stop.set()
    await asyncio.to_thread(prober.join)
    await server.stop()
    assert all(r.status_code == 503 for r in replies), [r.status_code for r in replies]
    return {
        "elapsed_s": elapsed,
        "healthz_max_s": max(prober.latencies),
        "healthz_p50_s": statistics.median(prober.latencies),
        "healthz_answers": float(len(prober.latencies)),
    }


def parse_times(payload: bytes, rounds: int) -> dict[str, float]:
    """Seconds to parse the body: json.loads (holds the GIL throughout) and the yielding loader."""
    loader = IncrementalLoader(float)

    def best(parse: Any) -> float:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            parse(payload)
            times.append(time.perf_counter() - started)
        return min(times)

    inline, yielding = best(json.loads), best(loader.loads)
    return {
        "json_loads_s": inline,
        "yielding_s": yielding,
        "yielding_vs_json_loads": yielding / inline,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bodies", type=int, default=3)
    parser.add_argument("--mb", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    limit = int(args.mb * MB)
    payload = body(limit)
    default = GatewaySettings(port=0, backends={"anomaly": "127.0.0.1:9"}, max_body_bytes=limit)
    modes = {
        "off the loop (default)": default,
        "on the loop (before)": default.model_copy(update={"offload_bytes": limit + 1}),
    }
    results: dict[str, Any] = {"bodies": args.bodies, "body_bytes": len(payload)}
    for name, settings in modes.items():
        rounds = [await round_trip(settings, payload, args.bodies) for _ in range(args.rounds)]
        results[name] = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    before, after = results["on the loop (before)"], results["off the loop (default)"]
    results["healthz_max_ratio"] = after["healthz_max_s"] / before["healthz_max_s"]
    results["elapsed_ratio"] = after["elapsed_s"] / before["elapsed_s"]
    results["parse"] = parse_times(payload, args.rounds)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
