"""The local models a replica serves, by name: from a directory or from the model registry.

Each served name has its own model runtime (`nexus.common.runtime`), which loads, follows the
registry and reloads. Registry models are archives (see `nexus.llm.local.archive`) unpacked once
under a cache directory keyed by version and checksum. A model that follows an alias (no pinned
version) is reloaded when any replica promotes the alias to another version; the old one keeps
serving the generations it started, and its unpacked files are deleted. Replicas may share a
cache directory when they serve the same local models.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

from nexus.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from nexus.common.registry import DEFAULT_ALIAS, NAME_PATTERN, ModelRegistry
from nexus.common.runtime import Model, ModelRuntime, ModelSource
from nexus.llm.local.archive import FRAMEWORK, MAX_UNPACKED_BYTES, unpack_model
from nexus.llm.local.model import LocalModel

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_CONCURRENCY = 4
"""Generations that run at once per replica by default; more wait for a worker."""
DEFAULT_STALL_TIMEOUT_S = 60.0
"""How long a stream's generation waits for a reader that takes nothing before it stops."""
_NAME_PATTERN = NAME_PATTERN.replace("_-]", "_.-]")  # served names may hold dots ("tiny-1.5")
_NAME = re.compile(_NAME_PATTERN)


@dataclass(frozen=True)
class LocalModelSpec:
    """A local model to serve: from a directory, or from the llm service's model registry.

    Attributes:
        name: The name it is served under (litellm model "nexus-local/<name>").
        path: A model directory on this machine.
        registry_model: The registry model to load instead of `path`.
        alias: The registry alias to follow (when no version is pinned).
        version: A pinned registry version ("" follows `alias`).
        context_window: Most tokens of prompt and output; 0 reads it from the model's config.
    """

    name: str
    path: Path | None = None
    registry_model: str = ""
    alias: str = DEFAULT_ALIAS
    version: str = ""
    context_window: int = 0

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise InvalidArgument.for_field(
                "local_models.name", f"must match {_NAME_PATTERN}, got {self.name!r}"
            )
        if (self.path is None) == (not self.registry_model):
            raise InvalidArgument.for_field(
                f"local_models[{self.name}]", "set exactly one of path and registry_model"
            )
        if self.context_window < 0:
            raise InvalidArgument.for_field(
                f"local_models[{self.name}].context_window", "must not be negative"
            )


@dataclass(frozen=True)
class _Where:
    """How the models of one set load: device and unpacking."""

    device: str
    cache_dir: Path
    max_unpacked_bytes: int


class _ServedLocal(Model[None, None]):
    """One local model version as the runtime holds it. Generations go through the litellm
    provider (`LocalModels.get`), not `predict`; `unload` stops nothing, so that the version an
    alias moved away from finishes the generations it started."""

    def __init__(self, source: ModelSource, spec: LocalModelSpec, where: _Where) -> None:
        super().__init__(source)
        self.spec = spec
        self.where = where
        self.path = spec.path or Path()
        self._model: LocalModel | None = None

    @property
    def model(self) -> LocalModel:
        """The loaded model."""
        assert self._model is not None, "load() first"
        return self._model

    async def load(self) -> None:
        """Unpacks a registry version (once per version and checksum), then loads it."""
        if self.spec.path is None:
            self.path = await self._unpacked()
        self._model = await self.source.run(
            partial(
                LocalModel.load,
                self.path,
                name=self.spec.name,
                device=self.where.device,
                context_window=self.spec.context_window,
            )
        )

    async def _unpacked(self) -> Path:
        info = self.source.info
        assert info is not None
        target = self.where.cache_dir / info.name / f"{info.version}-{info.sha256[:16]}"
        if not target.is_dir():
            artifact = await self.source.artifact()
            await self.source.run(partial(_unpack, artifact, target, self.where.max_unpacked_bytes))
        return target


class LocalModels:
    """The loaded local models of one replica, by name.

    Args:
        specs: What to serve.
        device: Torch device of every model ("auto", "cpu", "cuda", "cuda:1").
        registry: The llm service's model registry (needed by specs with `registry_model`).
        cache_dir: Where registry archives are unpacked.
        max_unpacked_bytes: Most bytes one registry archive may unpack to.
        max_concurrency: Generations running at once; more wait for a worker thread.
        stall_timeout_s: How long a streamed generation waits for a reader that takes
            nothing before it stops.

    Raises:
        InvalidArgument: Two specs with one name, or a bad concurrency.
        FailedPrecondition: A registry model without a registry.
    """

    def __init__(
        self,
        specs: Sequence[LocalModelSpec],
        *,
        device: str,
        registry: ModelRegistry | None,
        cache_dir: Path,
        max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    ) -> None:
        names = [spec.name for spec in specs]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise InvalidArgument.for_field(
                "local_models", f"names must be unique: {', '.join(duplicates)}"
            )
        if registry is None and any(spec.registry_model for spec in specs):
            raise FailedPrecondition("registry local models need the model registry")
        if max_concurrency < 1:
            raise InvalidArgument.for_field("max_concurrency", "must be at least 1")
        if not stall_timeout_s > 0:
            raise InvalidArgument.for_field("stall_timeout_s", "must be above 0")
        self._specs = list(specs)
        self.instance_id = uuid.uuid4().hex[:12]
        """Names this set in litellm's (process-wide) provider: see `register_provider`."""
        self._where = _Where(device, cache_dir, max_unpacked_bytes)
        self._registry = registry
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="nexus-local")
        self._runtimes = {spec.name: self._runtime(spec) for spec in self._specs}
        self._served: dict[str, _ServedLocal] = {}
        self._stall_timeout_s = stall_timeout_s
        self._stopped = False

    def _runtime(self, spec: LocalModelSpec) -> ModelRuntime[_ServedLocal]:
        return ModelRuntime(
            self._registry if spec.registry_model else None,
            partial(_ServedLocal, spec=spec, where=self._where),
            executor=self._executor,
            frameworks=[FRAMEWORK],
            service="llm",
        )

    def run(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """Schedules `work` on one of the worker threads generations run on.

        Raises:
            Unavailable: The models are stopped.
        """
        try:
            return asyncio.get_running_loop().run_in_executor(self._executor, work)
        except RuntimeError as err:  # the executor is shut down
            raise Unavailable("the local models are stopped") from err

    @property
    def stall_timeout_s(self) -> float:
        """How long a streamed generation waits for a reader that takes nothing."""
        return self._stall_timeout_s

    async def start(self) -> None:
        """Loads every model, off the event loop, and follows registry promotions.

        Raises:
            NotFound: A registry model, alias or version that does not exist.
            FailedPrecondition: A model that cannot be loaded, or an artifact of another
                framework.
            InvalidArgument: An archive that is not safe to unpack.
        """
        for spec in self._specs:
            self._served[spec.name] = await self._load(spec)

    async def _load(self, spec: LocalModelSpec) -> _ServedLocal:
        runtime = self._runtimes[spec.name]
        if not spec.registry_model:
            return await runtime.add(spec.name)
        if not spec.version:  # follows its alias
            await runtime.start()
            runtime.on_reload(partial(self._reloaded, spec))
        async with runtime.serving(
            spec.registry_model, alias=spec.alias, version=spec.version
        ) as served:
            return served.model

    def get(self, name: str) -> LocalModel:
        """The model served as `name`.

        Raises:
            NotFound: No local model of that name.
        """
        served = self._served.get(name)
        if served is None:
            known = ", ".join(sorted(self._served)) or "none"
            raise NotFound(f"local model {name!r} is not loaded (local models: {known})")
        return served.model

    def version(self, name: str) -> str:
        """The registry version served as `name` ("" for a directory model).

        Raises:
            NotFound: No local model of that name.
        """
        self.get(name)
        return self._served[name].source.version

    def names(self) -> list[str]:
        """The names of the loaded models, sorted."""
        return sorted(self._served)

    async def stop(self) -> None:
        """Stops reloading, stops the running generations (before their next token) and lets
        go of the models."""
        self._stopped = True
        for served in self._served.values():
            served.model.close()
        self._served.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)  # waiting calls fail now
        for runtime in self._runtimes.values():
            await runtime.stop()
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    async def _reloaded(self, spec: LocalModelSpec, registry_model: str) -> None:
        """Serves the version the runtime reloaded for the spec's alias, and deletes the
        unpacked files no served model came from."""
        runtime = self._runtimes[spec.name]
        version = runtime.resolve(registry_model, alias=spec.alias).version
        loaded = runtime.loaded(registry_model, version)
        if self._stopped or loaded is None:
            return
        self._served[spec.name] = loaded
        log.info("local model %s now serves %s version %s", spec.name, registry_model, version)
        await asyncio.to_thread(self._prune, registry_model)

    def _prune(self, registry_model: str) -> None:
        """Deletes the unpacked versions of `registry_model` that no served model came from
        (the loaded ones live in memory; their files are only needed to load them again)."""
        used = {served.path for served in self._served.values()}
        folder = self._where.cache_dir / registry_model
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith(".") and entry not in used:
                shutil.rmtree(entry, ignore_errors=True)


def _unpack(artifact: bytes, target: Path, max_bytes: int) -> None:
    """Unpacks beside `target`, then renames: a half-unpacked model is never used."""
    staging = target.parent / f".unpacking-{uuid.uuid4().hex}"
    unpack_model(artifact, staging, max_bytes=max_bytes)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():  # not another replica's rename that won
            raise
