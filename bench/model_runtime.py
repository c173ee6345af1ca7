"""The model runtime (`nexus.common.runtime`): cold-load latency, and memory with many small models.

One run starts its own nats-server, registers `--models` small models (signed pickles of
`--floats` float64 weights each, as a per-series or per-tenant model would be) in a real
registry, and measures:

- cold load: p50/p99 of `runtime.serving(name)` on a model version not held (fetch from the
  object store, sha256, signature check, unpickle on the executor, bookkeeping), against the
  baseline of `pickle.loads` of the same bytes in the same process, and of the registry fetch
  alone (`load_artifact`);
- memory: process RSS with every model registered and none loaded, then with a runtime bounded
  to `--max-models` that touched all models once and then served `--rounds` cycles over the
  `--hot` hot ones (latency of those hot requests too), then with an unbounded runtime holding
  every model.

Usage: python bench/model_runtime.py [--models 1000] [--hot 50] [--max-models 100]
Writes bench/results/model_runtime.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import os
import pickle
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nexus.common.events import EventBus
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.registry import ModelRegistry
from nexus.common.runtime import Model, ModelRuntime, ModelSource
from nexus.common.settings import NexusSettings

RESULTS = Path(__file__).resolve().parent / "results" / "model_runtime.json"
KEY = "bench-signing-key"
MIB = 1024 * 1024


@dataclass
class SeriesModel:
    """A small per-series model: standardisation and a weight vector."""

    mean: float
    std: float
    weights: np.ndarray


class ServedSeries(Model[np.ndarray, float]):
    """How a service would serve a `SeriesModel` through the runtime."""

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self.series: SeriesModel | None = None

    async def load(self) -> None:
        loaded = await self.source.signed_object()
        assert isinstance(loaded, SeriesModel)
        self.series = loaded

    def predict(self, inputs: np.ndarray) -> float:
        assert self.series is not None
        standard = (inputs - self.series.mean) / self.series.std
        return float(standard @ self.series.weights[: len(standard)])


def rss_mib() -> float:
    """Resident memory of this process (Linux /proc), after a collection and after handing
    freed heap back to the OS, so that what registering left behind does not count."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(samples_s)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
    }


async def timed(step: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await step()
    return time.perf_counter() - started


def model_of(index: int, floats: int) -> SeriesModel:
    rng = np.random.default_rng(index)
    return SeriesModel(float(index), 1.0 + index % 7, rng.normal(size=floats))


async def register_all(registry: ModelRegistry, count: int, floats: int) -> list[str]:
    names = [f"series-{i:05d}" for i in range(count)]
    for index, name in enumerate(names):
        await registry.register_object(name, model_of(index, floats), framework="pickle")
        await registry.promote(name, "1")
    return names


def runtime(
    registry: ModelRegistry, executor: ThreadPoolExecutor, max_models: int | None
) -> ModelRuntime[ServedSeries]:
    return ModelRuntime(registry, ServedSeries, executor=executor, max_models=max_models)


async def serve(rt: ModelRuntime[ServedSeries], name: str, x: np.ndarray) -> float:
    async with rt.serving(name) as served:
        return await rt.predict(served, x)


async def cold_loads(
    registry: ModelRegistry, executor: ThreadPoolExecutor, names: list[str], floats: int
) -> dict[str, Any]:
    """Cold loads through the runtime vs. the registry fetch and plain unpickling."""
    rt = runtime(registry, executor, max_models=None)
    loads = [await timed(partial(serve, rt, name, np.ones(4))) for name in names]
    fetches = [await timed(partial(registry.load_artifact, name, "1")) for name in names]
    await rt.stop()
    payloads = [
        pickle.dumps(model_of(i, floats), pickle.HIGHEST_PROTOCOL) for i in range(len(names))
    ]
    unpickles = []
    for payload in payloads:
        started = time.perf_counter()
        pickle.loads(payload)
        unpickles.append(time.perf_counter() - started)
    return {
        "models": len(names),
        "artifact_bytes": len(payloads[0]),
        "runtime_cold_load": percentiles(loads),
        "registry_fetch_only": percentiles(fetches),
        "baseline_pickle_loads": percentiles(unpickles),
    }


async def memory(
    registry: ModelRegistry,
    executor: ThreadPoolExecutor,
    names: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """RSS with none loaded, with a bounded runtime over a hot set, with all loaded."""
    none_loaded = rss_mib()
    bounded = runtime(registry, executor, max_models=args.max_models)
    x = np.ones(4)
    for name in names:
        await serve(bounded, name, x)
    hot = names[: args.hot]
    latencies = [
        await timed(partial(serve, bounded, name, x)) for _ in range(args.rounds) for name in hot
    ]
    result: dict[str, Any] = {
        "rss_none_loaded_mib": none_loaded,
        "rss_bounded_mib": rss_mib(),
        "bounded_held": len(bounded.held()),
        "bounded_estimated_mib": bounded.size_bytes / MIB,
        "hot_requests": {"count": len(latencies), **percentiles(latencies)},
    }
    await bounded.stop()
    everything = runtime(registry, executor, max_models=None)
    for name in names:
        await serve(everything, name, x)
    result |= {"rss_all_loaded_mib": rss_mib(), "all_held": len(everything.held())}
    await everything.stop()
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        server = NatsServer(Path(folder))
        server.start()
        try:
            return await _run(server.url, args)
        finally:
            server.stop()


async def _run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = NexusSettings(nats_url=url, registry_signing_key=KEY, log_json=False)
    nc = await connect(settings, "bench-model-runtime")
    service = f"bench{uuid.uuid4().hex[:8]}"
    registry = ModelRegistry(EventBus(nc, service), service, signing_key=KEY.encode())
    await registry.start()
    executor = ThreadPoolExecutor(2)
    try:
        started = time.perf_counter()
        names = await register_all(registry, args.models, args.floats)
        registered_s = time.perf_counter() - started
        cold = await cold_loads(registry, executor, names[: args.cold], args.floats)
        mem = await memory(registry, executor, names, args)
    finally:
        await registry.stop()
        await nc.drain()
        executor.shutdown()
    return {
        "config": vars(args),
        "register_seconds": registered_s,
        "cold_load": cold,
        "memory": mem,
    }


def report(results: dict[str, Any]) -> None:
    cold, mem = results["cold_load"], results["memory"]
    print(f"cold load of a {cold['artifact_bytes']} B model ({cold['models']} loads):")
    for label in ("runtime_cold_load", "registry_fetch_only", "baseline_pickle_loads"):
        row = cold[label]
        print(f"  {label:24} p50 {row['p50_ms']:8.3f} ms   p99 {row['p99_ms']:8.3f} ms")
    cfg = results["config"]
    print(f"memory with {cfg['models']} registered models, {cfg['hot']} hot:")
    print(f"  none loaded                   {mem['rss_none_loaded_mib']:8.1f} MiB")
    print(
        f"  bounded to {cfg['max_models']:4} models         {mem['rss_bounded_mib']:8.1f} MiB "
        f"(held {mem['bounded_held']}, est. {mem['bounded_estimated_mib']:.1f} MiB)"
    )
    print(f"  all {mem['all_held']} loaded             {mem['rss_all_loaded_mib']:8.1f} MiB")
    hot = mem["hot_requests"]
    print(f"  hot requests: {hot['count']}, p50 {hot['p50_ms']:.3f} ms, p99 {hot['p99_ms']:.3f} ms")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--hot", type=int, default=50)
    parser.add_argument("--max-models", type=int, default=100)
    parser.add_argument("--floats", type=int, default=8192, help="weights per model (float64)")
    parser.add_argument("--cold", type=int, default=200, help="cold loads timed")
    parser.add_argument("--rounds", type=int, default=20, help="cycles over the hot models")
    return parser.parse_args()


if __name__ == "__main__":
    results = asyncio.run(main(parse()))
    report(results)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")
