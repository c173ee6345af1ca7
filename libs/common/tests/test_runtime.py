"""ModelRuntime over a real registry on JetStream: lazy and single-flight loads, LRU by count
and bytes, reloads when another replica changes the registry, A/B versions, batching."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from nats.aio.client import Client
from prometheus_client import REGISTRY

from nexus.common.errors import FailedPrecondition, NotFound
from nexus.common.events import EventBus
from nexus.common.nats import connect
from nexus.common.registry import ModelRegistry
from nexus.common.runtime import Batching, Model, ModelRuntime, ModelSource
from nexus.common.settings import NexusSettings

pytestmark = pytest.mark.integration

KEY = b"test-signing-key"


@dataclass(frozen=True)
class Linear:
    """What the tests register: y = weight * x."""

    weight: float


class Journal:
    """What the models of one test did, in order."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, str]] = []
        self.unloads: list[tuple[str, str]] = []
        self.batches: list[int] = []


class LinearModel(Model[float, float]):
    """A registered `Linear`, slow to load so that concurrent first requests overlap."""

    def __init__(self, source: ModelSource, journal: Journal, size: int, batching: bool) -> None:
        super().__init__(source)
        self.journal = journal
        self.size = size
        self.batching = Batching(max_batch_size=64, max_wait_ms=50) if batching else None
        self.linear = Linear(0.0)

    async def load(self) -> None:
        self.journal.loads.append((self.source.name, self.source.version))
        await asyncio.sleep(0.02)
        loaded = await self.source.signed_object()
        assert isinstance(loaded, Linear)
        self.linear = loaded

    def predict(self, inputs: float) -> float:
        return self.linear.weight * inputs

    def predict_batch(self, batch: list[float]) -> list[float]:
        self.journal.batches.append(len(batch))
        return [self.linear.weight * x for x in batch]

    def predict_stream(self, inputs: float) -> Iterator[float]:
        for step in range(3):
            yield self.linear.weight * inputs * step

    def unload(self) -> None:
        self.journal.unloads.append((self.source.name, self.source.version))

    def size_bytes(self) -> int:
        return self.size


@pytest.fixture
def service() -> str:
    return f"t{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def registry(nats_client: Client, service: str) -> AsyncIterator[ModelRegistry]:
    registry = ModelRegistry(EventBus(nats_client, "test"), service, signing_key=KEY)
    await registry.start()
    yield registry
    await registry.stop()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown()


@pytest.fixture
def journal() -> Journal:
    return Journal()


RuntimeFactory = Callable[..., ModelRuntime[LinearModel]]


@pytest.fixture
async def make_runtime(
    registry: ModelRegistry, executor: ThreadPoolExecutor, journal: Journal
) -> AsyncIterator[RuntimeFactory]:
    made: list[ModelRuntime[LinearModel]] = []

    def make(
        *, size: int = 100, batching: bool = False, **limits: int
    ) -> ModelRuntime[LinearModel]:
        runtime = ModelRuntime(
            registry,
            lambda source: LinearModel(source, journal, size, batching),
            executor=executor,
            **limits,  # type: ignore[arg-type]
        )
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        await runtime.stop()


async def register(registry: ModelRegistry, name: str, *weights: float) -> None:
    """Registers one version per weight and promotes the first."""
    for weight in weights:
        await registry.register_object(name, Linear(weight), framework="pickle")
    await registry.promote(name, "1")


async def predict(runtime: ModelRuntime[LinearModel], name: str, x: float, **how: str) -> float:
    async with runtime.serving(name, **how) as served:
        return await runtime.predict(served, x)


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_loads_on_first_use_once_however_many_ask(
    registry: ModelRegistry, make_runtime: RuntimeFactory, journal: Journal
) -> None:
    await register(registry, "m", 2.0)
    runtime = make_runtime()
    await runtime.start()
    assert runtime.held() == []
    assert journal.loads == []

    results = await asyncio.gather(*(predict(runtime, "m", float(x)) for x in range(20)))

    assert results == [2.0 * x for x in range(20)]
    assert journal.loads == [("m", "1")]
    assert runtime.held() == [("m", "1")]


async def test_a_failed_load_reaches_every_caller_and_is_not_kept(
    registry: ModelRegistry, make_runtime: RuntimeFactory
) -> None:
    await registry.register("raw", b"not a pickle", framework="onnx")
    await registry.promote("raw", "1")
    runtime = make_runtime()
    failures = await asyncio.gather(
        *(predict(runtime, "raw", 1.0) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(f, FailedPrecondition) for f in failures)
    assert runtime.held() == []
    with pytest.raises(NotFound):
        await predict(runtime, "missing", 1.0)


async def test_evicts_the_least_recently_used_beyond_the_count(
    registry: ModelRegistry, make_runtime: RuntimeFactory, journal: Journal
) -> None:
    for name in "abc":
        await register(registry, name, 1.0)
    runtime = make_runtime(max_models=2)
    for name in "aba":
        await predict(runtime, name, 1.0)

    await predict(runtime, "c", 1.0)

    assert runtime.held() == [("a", "1"), ("c", "1")]
    await eventually(lambda: journal.unloads == [("b", "1")])
    await predict(runtime, "b", 1.0)  # loads again, lets go of a
    assert runtime.held() == [("c", "1"), ("b", "1")]


async def test_evicts_beyond_the_bytes(
    registry: ModelRegistry, make_runtime: RuntimeFactory, journal: Journal
) -> None:
    for name in "abcd":
        await register(registry, name, 1.0)
    runtime = make_runtime(size=100, max_bytes=250)
    for name in "abcd":
        await predict(runtime, name, 1.0)
    assert runtime.held() == [("c", "1"), ("d", "1")]
    assert runtime.size_bytes == 200
    await eventually(lambda: sorted(journal.unloads) == [("a", "1"), ("b", "1")])


async def test_an_evicted_model_unloads_after_its_last_request(
    registry: ModelRegistry, make_runtime: RuntimeFactory, journal: Journal
) -> None:
    await register(registry, "a", 1.0)
    await register(registry, "b", 1.0)
    runtime = make_runtime(max_models=1)
    async with runtime.serving("a") as served:
        await predict(runtime, "b", 1.0)  # evicts a while it is in use
        assert runtime.held() == [("b", "1")]
        await asyncio.sleep(0.05)
        assert journal.unloads == []
        assert await runtime.predict(served, 3.0) == 3.0
    await eventually(lambda: journal.unloads == [("a", "1")])


async def test_every_replica_reloads_when_another_one_promotes(
    nexus_settings: NexusSettings,
    registry: ModelRegistry,
    make_runtime: RuntimeFactory,
    journal: Journal,
    service: str,
) -> None:
    await register(registry, "m", 1.0, 10.0)
    runtime = make_runtime()
    await runtime.start()
    reloaded: list[str] = []

    async def on_reload(name: str) -> None:
        reloaded.append(name)

    runtime.on_reload(on_reload)
    assert await predict(runtime, "m", 1.0) == 1.0

    other_nc = await connect(nexus_settings, "other-replica")
    other = ModelRegistry(EventBus(other_nc, "other"), service, signing_key=KEY)
    await other.start()
    try:
        await other.promote("m", "2")
        await eventually(lambda: reloaded == ["m"])
        assert runtime.held() == [("m", "2")]  # loaded before the first request, v1 let go
        assert await predict(runtime, "m", 1.0) == 10.0
        await eventually(lambda: journal.unloads == [("m", "1")])

        await other.delete_version("m", "1")
        await other.delete_model("m")
        await eventually(lambda: runtime.held() == [])
    finally:
        await other.stop()
        await other_nc.drain()


async def test_warm_loads_what_the_aliases_route_to(
    registry: ModelRegistry, make_runtime: RuntimeFactory, journal: Journal
) -> None:
    await register(registry, "a", 1.0, 2.0)
    await registry.set_traffic_split("a", "production", {"1": 50, "2": 50})
    await registry.register_object("unaliased", Linear(1.0), framework="pickle")
    runtime = make_runtime()
    await runtime.warm()
    assert runtime.held() == [("a", "1"), ("a", "2")]
    assert journal.loads == [("a", "1"), ("a", "2")]


async def test_a_b_splits_are_sticky_and_reported_and_labelled(
    registry: ModelRegistry, make_runtime: RuntimeFactory
) -> None:
    await register(registry, "ab", 1.0, 2.0)
    await registry.set_traffic_split("ab", "production", {"1": 50, "2": 50})
    runtime = make_runtime()
    served_by: dict[str, set[str]] = {}
    for user in [f"user-{i}" for i in range(40)] * 2:
        async with runtime.serving("ab", routing_key=user) as served:
            output = await runtime.predict(served, 1.0)
            assert output == float(served.resolved.version)  # the version that served it
            served_by.setdefault(user, set()).add(served.resolved.version)
    assert all(len(versions) == 1 for versions in served_by.values())  # sticky per user
    assert {v for versions in served_by.values() for v in versions} == {"1", "2"}
    labels = {"service": registry.service, "model": "ab"}
    counted = [
        REGISTRY.get_sample_value("nexus_predictions_total", {**labels, "version": v}) or 0.0
        for v in ("1", "2")
    ]
    assert sum(counted) == 80
    assert all(counted)


async def test_batching_merges_concurrent_predictions(
    registry: ModelRegistry, make_runtime: RuntimeFactory, journal: Journal
) -> None:
    await register(registry, "m", 3.0)
    runtime = make_runtime(batching=True)
    async with runtime.serving("m") as served:
        outputs = await asyncio.gather(*(runtime.predict(served, float(x)) for x in range(10)))
    assert outputs == [3.0 * x for x in range(10)]
    assert journal.batches == [10]


async def test_streams_and_serves_models_outside_the_registry(
    registry: ModelRegistry, make_runtime: RuntimeFactory
) -> None:
    await register(registry, "m", 2.0)
    runtime = make_runtime()
    async with runtime.serving("m", version="1") as served:
        assert [p async for p in runtime.predict_stream(served, 1.0)] == [0.0, 2.0, 4.0]
    with pytest.raises(FailedPrecondition, match="not from the model registry"):
        await runtime.add("directory-model")
    assert runtime.held() == [("m", "1")]


async def test_refuses_frameworks_it_does_not_load(
    registry: ModelRegistry, executor: ThreadPoolExecutor, journal: Journal
) -> None:
    await registry.register("raw", b"onnx bytes", framework="onnx")
    runtime = ModelRuntime(
        registry,
        lambda source: LinearModel(source, journal, 1, False),
        executor=executor,
        frameworks=["pickle"],
    )
    with pytest.raises(FailedPrecondition, match="'onnx', not one of pickle"):
        await predict(runtime, "raw", 1.0, version="1")
    assert journal.loads == []


async def test_a_reload_follows_only_the_aliases_used_and_keeps_named_versions(
    registry: ModelRegistry, make_runtime: RuntimeFactory, journal: Journal
) -> None:
    await register(registry, "m", 1.0, 2.0, 3.0)
    await registry.promote("m", "1", "staging")
    runtime = make_runtime()
    await runtime.start()
    await predict(runtime, "m", 1.0)  # production -> 1
    await predict(runtime, "m", 1.0, version="3")  # named: kept across alias changes

    await registry.promote("m", "2", "staging")  # no request went through staging
    await asyncio.sleep(0.1)
    assert journal.loads == [("m", "1"), ("m", "3")]

    await registry.promote("m", "2")
    await eventually(lambda: runtime.held() == [("m", "3"), ("m", "2")])
