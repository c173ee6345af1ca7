"""ModelRuntime: resolve -> load -> cache -> batch -> reload -> evict, once for every service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from nexus.common.batching import MicroBatcher
from nexus.common.errors import FailedPrecondition, NexusError, NotFound, Unavailable
from nexus.common.registry import ModelChange, ModelRegistry, ModelVersionInfo, Resolved
from nexus.common.runtime._model import Model, ModelSource
from nexus.common.telemetry import (
    observe_batch,
    record_model_eviction,
    record_model_load,
    record_predictions,
    set_models_loaded,
)

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741
T = TypeVar("T")
M = TypeVar("M", bound=Model[Any, Any])
M_co = TypeVar("M_co", bound=Model[Any, Any], covariant=True)

Key = tuple[str, str]
ReloadCallback = Callable[[str], Awaitable[None]]
"""Awaited with a model's name after the runtime reloaded it for a registry change."""

_RELOAD_KINDS = frozenset({"promoted", "split"})
_MAX_ATTEMPTS = 8  # loads of one request whose model was evicted before it could use it
_END = object()


@dataclass(eq=False)
class _Entry(Generic[M]):
    """One loaded version: its model, size, batcher and the requests using it."""

    key: Key
    model: M
    size: int
    batcher: MicroBatcher[Any, Any] | None
    fixed: bool = False
    pinned: bool = False  # a request named this version: an alias change does not let it go
    users: int = 0
    evicted: bool = False


class Served(Generic[M_co]):
    """A model version leased to one request by `ModelRuntime.serving`.

    Attributes:
        model: The loaded model.
        resolved: The name, version and alias that served: report it with the result.
    """

    __slots__ = ("_entry", "resolved")

    def __init__(self, entry: _Entry[Any], resolved: Resolved) -> None:
        self._entry = entry
        self.resolved = resolved

    @property
    def model(self) -> M_co:
        """The loaded model."""
        return cast(M_co, self._entry.model)


class ModelRuntime(Generic[M]):
    """Serves the model versions of one service's registry, loaded on first use.

    A request names a model and an alias (or a pinned version, with a routing key for sticky
    A/B splits); the runtime resolves it against the registry's mirror, loads that version once
    however many requests ask at the same time, keeps it in an LRU bounded by count and by
    estimated bytes, merges concurrent predictions when the model declares batching, and runs
    every load, predict and unload on the service's executor. When any replica promotes a
    model or changes its split, every replica whose requests went through that alias loads the
    versions the alias now routes to and lets go of the versions no followed alias routes to
    (unless a request named the version); deleted versions are let go at once. A version
    evicted while requests use it is unloaded when the last one ends.

    Args:
        registry: The service's model registry (None serves only models added with `add`).
        factory: Builds an (unloaded) model for a version.
        executor: Where loads, predictions and unloads run: the service's executor.
        max_models: Most versions held; None for no bound.
        max_bytes: Most estimated bytes held (`Model.size_bytes`); None for no bound.
        frameworks: Registry frameworks this runtime loads (empty: any).
        service: The `service` label of metrics (default: the registry's service).
    """

    def __init__(
        self,
        registry: ModelRegistry | None,
        factory: Callable[[ModelSource], M],
        *,
        executor: Executor,
        max_models: int | None = None,
        max_bytes: int | None = None,
        frameworks: Collection[str] = (),
        service: str = "",
    ) -> None:
        if (max_models is not None and max_models < 1) or (max_bytes is not None and max_bytes < 1):
            raise ValueError("max_models and max_bytes must be at least 1 (or None)")
        self._registry = registry
        self._factory = factory
        self._executor = executor
        self._max_models = max_models
        self._max_bytes = max_bytes
        self._frameworks = frozenset(frameworks)
        self.service = service or (registry.service if registry is not None else "")
        self._entries: OrderedDict[Key, _Entry[M]] = OrderedDict()
        self._loading: dict[Key, asyncio.Task[_Entry[M]]] = {}
        self._unloading: set[asyncio.Task[None]] = set()
        self._listeners: list[ReloadCallback] = []
        self._followed: dict[str, set[str]] = {}  # aliases requests went through, by model
        self._bytes = 0
        self._started = False
        self._stopped = False

    # Lifecycle.

    async def start(self) -> None:
        """Follows registry changes (every replica reloads what it holds)."""
        if self._registry is not None and not self._started:
            self._registry.on_change(self._on_change)
        self._started = True

    async def warm(self, names: Iterable[str] | None = None) -> None:
        """Loads the versions that the aliases of `names` route to (every model with an alias
        when None), until the limits are reached: call it before the service turns SERVING.

        Raises:
            NexusError: A named model that cannot be resolved or loaded.
        """
        for name in names if names is not None else await self._aliased_names():
            aliases = self._aliases_of(name)
            self._followed.setdefault(name, set()).update(aliases)
            for version in self._routed_versions(name, aliases):
                if self._full():
                    return
                await self._entry_of((name, version))

    async def add(self, name: str) -> M:
        """Loads a model that is not in the registry (a directory, a built-in), served as
        `name` with version "": never evicted, never reloaded.

        Raises:
            NexusError: Whatever the model's `load` raised.
        """
        model = self._factory(ModelSource(name, "", None, None, self.run))
        entry = await self._loaded((name, ""), model, fixed=True)
        self._insert(entry)
        return model

    async def stop(self) -> None:
        """Stops reloading, cancels loads, flushes batchers and unloads every model."""
        self._stopped = True
        for task in self._loading.values():
            task.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        self._loading.clear()
        for key in list(self._entries):
            self._evict(key, count=False)
        if self._unloading:
            await asyncio.gather(*self._unloading, return_exceptions=True)

    def on_reload(self, callback: ReloadCallback) -> None:
        """Awaits `callback(name)` after the runtime reloaded `name` for a registry change."""
        self._listeners.append(callback)

    # Serving.

    def resolve(
        self, name: str, *, alias: str = "", version: str = "", routing_key: str = ""
    ) -> Resolved:
        """The version that serves a request (the registry's rules; no I/O).

        Raises:
            NotFound: No such model, version or alias.
        """
        if (name, "") in self._entries and not alias and not version:
            return Resolved(name, "", "")
        return self._need_registry().resolve(
            name, alias=alias, version=version, routing_key=routing_key
        )

    @contextlib.asynccontextmanager
    async def serving(
        self, name: str, *, alias: str = "", version: str = "", routing_key: str = ""
    ) -> AsyncIterator[Served[M]]:
        """Leases the version that serves a request, loading it on first use; an eviction
        waits for the lease to end before it unloads the model.

        Raises:
            NotFound: No such model, version or alias.
            FailedPrecondition: A version of a framework this runtime does not load.
        """
        resolved = self.resolve(name, alias=alias, version=version, routing_key=routing_key)
        if resolved.alias:
            self._followed.setdefault(resolved.name, set()).add(resolved.alias)
        entry = await self._lease((resolved.name, resolved.version))
        entry.pinned = entry.pinned or not resolved.alias
        try:
            yield Served(entry, resolved)
        finally:
            self._release(entry)

    async def predict(self, served: Served[Model[I, O]], inputs: I) -> O:
        """Predicts with a leased model: through its batcher when it declares batching, else
        alone; on the executor either way. Counts the predictions under the serving version."""
        batcher = served._entry.batcher
        if batcher is not None:
            output = cast(O, await batcher.submit(inputs))
        else:
            output = await self.run(lambda: served.model.predict(inputs))
        resolved = served.resolved
        record_predictions(
            self.service, resolved.name, resolved.version, served.model.count(inputs)
        )
        return output

    async def predict_stream(self, served: Served[Model[I, O]], inputs: I) -> AsyncIterator[O]:
        """The pieces of `Model.predict_stream`, each produced on the executor."""
        pieces = served.model.predict_stream(inputs)
        resolved = served.resolved
        record_predictions(
            self.service, resolved.name, resolved.version, served.model.count(inputs)
        )
        while (piece := await self.run(lambda: next(pieces, _END))) is not _END:
            yield cast(O, piece)

    def loaded(self, name: str, version: str = "") -> M | None:
        """The model of a version if it is loaded now (no load, no lease)."""
        entry = self._entries.get((name, version))
        return entry.model if entry is not None else None

    def held(self) -> list[tuple[str, str]]:
        """The (name, version) pairs held now, least recently used first."""
        return list(self._entries)

    @property
    def size_bytes(self) -> int:
        """Estimated memory of the versions held now."""
        return self._bytes

    def run(self, work: Callable[[], T]) -> Awaitable[T]:
        """Runs blocking `work` on the service's executor.

        Raises:
            Unavailable: The executor is shut down.
        """
        try:
            return asyncio.get_running_loop().run_in_executor(self._executor, work)
        except RuntimeError as err:
            raise Unavailable(f"the {self.service} model runtime is stopped") from err

    # Loading.

    async def _lease(self, key: Key) -> _Entry[M]:
        """A loaded entry with one more user; retried when an eviction won the race."""
        for _ in range(_MAX_ATTEMPTS):
            entry = await self._entry_of(key)
            if not entry.evicted:
                entry.users += 1
                return entry
        raise Unavailable(f"model {key[0]} version {key[1]} keeps being evicted: raise the limits")

    def _release(self, entry: _Entry[M]) -> None:
        entry.users -= 1
        if entry.evicted and entry.users == 0:
            self._unload(entry)

    async def _entry_of(self, key: Key) -> _Entry[M]:
        """The entry of `key`, loaded by one task however many callers wait for it."""
        if self._stopped:
            raise Unavailable(f"the {self.service} model runtime is stopped")
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        task = self._loading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load(key))
            task.add_done_callback(_retrieve_exception)
            self._loading[key] = task
        return await asyncio.shield(task)

    async def _load(self, key: Key) -> _Entry[M]:
        me = asyncio.current_task()
        try:
            model = self._factory(self._source(*key))
            entry = await self._loaded(key, model)
            if self._loading.get(key) is me:  # not invalidated (deleted, stopped) meanwhile
                self._insert(entry)
            else:
                entry.evicted = True
                self._unload(entry)
            return entry
        finally:
            if self._loading.get(key) is me:
                del self._loading[key]

    async def _loaded(self, key: Key, model: M, *, fixed: bool = False) -> _Entry[M]:
        started = time.perf_counter()
        await model.load()
        record_model_load(self.service, time.perf_counter() - started)
        return _Entry(key, model, max(0, model.size_bytes()), self._batcher(key, model), fixed)

    def _source(self, name: str, version: str) -> ModelSource:
        registry = self._need_registry()
        info = _version_info(registry, name, version)
        if self._frameworks and info.framework not in self._frameworks:
            raise FailedPrecondition(
                f"model {name!r} version {version} is {info.framework!r}, not one of "
                f"{', '.join(sorted(self._frameworks))}",
                "WRONG_FRAMEWORK",
            )
        return ModelSource(name, version, info, registry, self.run)

    def _batcher(self, key: Key, model: M) -> MicroBatcher[Any, Any] | None:
        spec = model.batching
        if spec is None:
            return None
        return MicroBatcher(
            model.predict_batch,
            max_batch_size=spec.max_batch_size,
            max_wait_ms=spec.max_wait_ms,
            max_concurrent_batches=spec.max_concurrent_batches,
            executor=self._executor,
            name=f"{key[0]}:{key[1]}",
            on_batch=lambda size: observe_batch(self.service, "model", size),
        )

    # Holding and letting go.

    def _insert(self, entry: _Entry[M]) -> None:
        if previous := self._entries.pop(entry.key, None):
            self._bytes -= previous.size
            previous.evicted = True
            self._release_if_idle(previous)
        self._entries[entry.key] = entry
        self._bytes += entry.size
        self._make_room(keep=entry.key)
        self._report()

    def _make_room(self, keep: Key) -> None:
        """Evicts least recently used versions until within both limits (never `keep`)."""
        while self._over_limits():
            victim = next((k for k, e in self._entries.items() if k != keep and not e.fixed), None)
            if victim is None:
                return
            self._evict(victim)

    def _over_limits(self) -> bool:
        too_many = self._max_models is not None and len(self._entries) > self._max_models
        return too_many or (self._max_bytes is not None and self._bytes > self._max_bytes)

    def _full(self) -> bool:
        full = self._max_models is not None and len(self._entries) >= self._max_models
        return full or (self._max_bytes is not None and self._bytes >= self._max_bytes)

    def _evict(self, key: Key, *, count: bool = True) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= entry.size
        entry.evicted = True
        if count:
            record_model_eviction(self.service)
        self._release_if_idle(entry)
        self._report()

    def _release_if_idle(self, entry: _Entry[M]) -> None:
        if entry.users == 0:
            self._unload(entry)

    def _unload(self, entry: _Entry[M]) -> None:
        task = asyncio.get_running_loop().create_task(self._unload_now(entry))
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)

    async def _unload_now(self, entry: _Entry[M]) -> None:
        try:
            if entry.batcher is not None:
                await entry.batcher.close()
            try:
                await self.run(entry.model.unload)
            except Unavailable:  # the executor is shut down: the service is stopping
                entry.model.unload()
        except Exception:
            log.exception("unloading model %s version %s failed", *entry.key)

    def _report(self) -> None:
        set_models_loaded(self.service, len(self._entries), self._bytes)

    # Following the registry.

    async def _on_change(self, change: ModelChange) -> None:
        if self._stopped:
            return
        if change.kind == "version_deleted":
            self._forget(change.name, change.version)
        elif change.kind == "deleted":
            self._forget(change.name)
            self._followed.pop(change.name, None)
        elif change.kind in _RELOAD_KINDS and self._follows(change.name, change.alias):
            await self._reload(change.name)

    def _follows(self, name: str, alias: str) -> bool:
        held = any(key[0] == name for key in [*self._entries, *self._loading])
        return held and alias in self._followed.get(name, ())

    async def _reload(self, name: str) -> None:
        """Loads what the followed aliases of `name` route to now, then lets go of the versions
        that none of them routes to and that no request named."""
        routed = self._routed_versions(name, self._followed.get(name, set()))
        for version in routed:
            try:
                await self._entry_of((name, version))
            except NexusError:
                log.exception("reloading model %s version %s failed", name, version)
                return  # the versions held keep serving
        for key, entry in list(self._entries.items()):
            if key[0] == name and key[1] not in routed and not entry.pinned:
                self._evict(key, count=False)
        for callback in self._listeners:
            await callback(name)

    def _forget(self, name: str, version: str | None = None) -> None:
        """Drops loads in progress and loaded entries of a deleted model or version."""
        matching = [
            key
            for key in [*self._entries, *self._loading]
            if key[0] == name and version in (None, key[1])
        ]
        for key in matching:
            self._loading.pop(key, None)
            self._evict(key, count=False)

    def _aliases_of(self, name: str) -> set[str]:
        try:
            return {alias.alias for alias in self._need_registry().get_model_now(name).aliases}
        except NotFound:
            return set()

    def _routed_versions(self, name: str, aliases: Collection[str]) -> list[str]:
        """The versions that `aliases` of `name` send traffic to, by version."""
        try:
            info = self._need_registry().get_model_now(name)
        except NotFound:
            return []
        versions = {
            v
            for alias in info.aliases
            if alias.alias in aliases
            for v, weight in alias.splits
            if weight > 0
        }
        return sorted(versions, key=int)

    async def _aliased_names(self) -> list[str]:
        registry = self._need_registry()
        names: list[str] = []
        token = ""
        while True:
            page, token = await registry.list_models(page_size=500, page_token=token)
            names += [info.name for info in page if info.aliases]
            if not token:
                return names

    def _need_registry(self) -> ModelRegistry:
        if self._registry is None:
            raise FailedPrecondition(f"the {self.service} model runtime has no model registry")
        return self._registry


def _version_info(registry: ModelRegistry, name: str, version: str) -> ModelVersionInfo:
    info = next((v for v in registry.get_model_now(name).versions if v.version == version), None)
    if info is None:
        raise NotFound(f"model {name!r} has no version {version}")
    return info


def _retrieve_exception(task: asyncio.Task[Any]) -> None:
    """Marks a failed load's exception as seen: its callers may all have been cancelled."""
    if not task.cancelled():
        task.exception()
