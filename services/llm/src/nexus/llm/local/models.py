"""The local models a replica serves, by name: from a directory or from the model registry.

Registry models are archives (see `nexus.llm.local.archive`) unpacked once under a cache
directory keyed by version and checksum. A model that follows an alias (no pinned version) is
reloaded when any replica promotes the alias to another version; the old one keeps serving the
generations it started, and its unpacked files are deleted. Replicas may share a cache directory
when they serve the same local models.
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
from pathlib import Path
from typing import TypeVar

from nexus.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from nexus.common.registry import DEFAULT_ALIAS, NAME_PATTERN, ModelChange, ModelRegistry
from nexus.llm.local.archive import FRAMEWORK, MAX_UNPACKED_BYTES, unpack_model
from nexus.llm.local.model import LocalModel

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_CONCURRENCY = 4
"""Generations that run at once per replica by default; more wait for a worker."""
DEFAULT_STALL_TIMEOUT_S = 60.0
"""How long a stream's generation waits for a reader that takes nothing before it stops."""
_RELOAD_KINDS = frozenset({"promoted", "split"})
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
class _Loaded:
    model: LocalModel
    version: str  # "" for a directory
    path: Path


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
        self._device = device
        self._registry = registry
        self._cache_dir = cache_dir
        self._max_unpacked_bytes = max_unpacked_bytes
        self._models: dict[str, _Loaded] = {}
        self._reloads: dict[str, asyncio.Task[None]] = {}
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="nexus-local")
        self._stall_timeout_s = stall_timeout_s
        self._stopped = False

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
            self._models[spec.name] = await self._load(spec)
        if self._registry is not None and any(spec.registry_model for spec in self._specs):
            self._registry.on_change(self._on_change)

    def get(self, name: str) -> LocalModel:
        """The model served as `name`.

        Raises:
            NotFound: No local model of that name.
        """
        loaded = self._models.get(name)
        if loaded is None:
            known = ", ".join(sorted(self._models)) or "none"
            raise NotFound(f"local model {name!r} is not loaded (local models: {known})")
        return loaded.model

    def version(self, name: str) -> str:
        """The registry version served as `name` ("" for a directory model).

        Raises:
            NotFound: No local model of that name.
        """
        self.get(name)
        return self._models[name].version

    def names(self) -> list[str]:
        """The names of the loaded models, sorted."""
        return sorted(self._models)

    async def stop(self) -> None:
        """Stops reloading, stops the running generations (before their next token) and lets
        go of the models."""
        self._stopped = True
        for task in self._reloads.values():
            task.cancel()
        await asyncio.gather(*self._reloads.values(), return_exceptions=True)
        self._reloads.clear()
        for loaded in self._models.values():
            loaded.model.close()
        self._models.clear()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def _load(self, spec: LocalModelSpec, version: str = "") -> _Loaded:
        """Loads one spec: its directory, or `version` (or the one its alias resolves to)."""
        if spec.path is not None:
            path, version = spec.path, ""
        else:
            path, version = await self._fetch(spec, version)
        model = await asyncio.to_thread(
            LocalModel.load,
            path,
            name=spec.name,
            device=self._device,
            context_window=spec.context_window,
        )
        return _Loaded(model, version, path)

    async def _fetch(self, spec: LocalModelSpec, version: str) -> tuple[Path, str]:
        """The unpacked directory of a registry version, unpacking it on first use."""
        registry = self._need_registry()
        name = spec.registry_model
        if not version:
            version = registry.resolve(name, alias=spec.alias, version=spec.version).version
        versions = registry.get_model_now(name).versions
        info = next((v for v in versions if v.version == version), None)
        if info is None:
            raise NotFound(f"registry model {name!r} has no version {version}")
        if info.framework != FRAMEWORK:
            raise FailedPrecondition(
                f"registry model {name!r} version {version} is {info.framework!r}, "
                f"not a local model ({FRAMEWORK!r})",
                "WRONG_FRAMEWORK",
            )
        target = self._cache_dir / name / f"{version}-{info.sha256[:16]}"
        if not target.is_dir():
            artifact = await registry.load_artifact(name, version)
            await asyncio.to_thread(self._unpack, artifact, target)
        return target, version

    def _unpack(self, artifact: bytes, target: Path) -> None:
        """Unpacks beside `target`, then renames: a half-unpacked model is never used."""
        staging = target.parent / f".unpacking-{uuid.uuid4().hex}"
        unpack_model(artifact, staging, max_bytes=self._max_unpacked_bytes)
        try:
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not target.is_dir():  # not another replica's rename that won
                raise

    async def _on_change(self, change: ModelChange) -> None:
        """Reloads the models that follow the alias that changed."""
        if self._stopped or change.kind not in _RELOAD_KINDS:
            return
        for spec in self._specs:
            if (
                spec.registry_model == change.name
                and not spec.version
                and change.alias == spec.alias
            ):
                self._schedule_reload(spec)

    def _schedule_reload(self, spec: LocalModelSpec) -> None:
        if previous := self._reloads.get(spec.name):
            previous.cancel()
        task = asyncio.create_task(self._reload(spec), name=f"reload-local-{spec.name}")
        self._reloads[spec.name] = task
        task.add_done_callback(lambda done: self._forget(spec.name, done))

    def _forget(self, name: str, task: asyncio.Task[None]) -> None:
        if self._reloads.get(name) is task:
            del self._reloads[name]

    async def _reload(self, spec: LocalModelSpec) -> None:
        """Loads the version the alias now resolves to and swaps it in; logs failures."""
        try:
            registry = self._need_registry()
            version = registry.resolve(spec.registry_model, alias=spec.alias).version
            current = self._models.get(spec.name)
            if current is not None and current.version == version:
                return
            loaded = await self._load(spec, version)
        except Exception:
            log.exception(
                "reloading local model %s failed; the old version keeps serving", spec.name
            )
            return
        if self._stopped:
            return
        self._models[spec.name] = loaded
        log.info("local model %s now serves %s version %s", spec.name, spec.registry_model, version)
        await asyncio.to_thread(self._prune, spec.registry_model)

    def _prune(self, registry_model: str) -> None:
        """Deletes the unpacked versions of `registry_model` that no loaded model came from
        (the loaded ones live in memory; their files are only needed to load them again)."""
        used = {loaded.path for loaded in self._models.values()}
        folder = self._cache_dir / registry_model
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith(".") and entry not in used:
                shutil.rmtree(entry, ignore_errors=True)

    def _need_registry(self) -> ModelRegistry:
        if self._registry is None:
            raise FailedPrecondition("registry local models need the model registry")
        return self._registry
