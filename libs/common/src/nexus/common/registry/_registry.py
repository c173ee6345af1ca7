"""ModelRegistry: one service's model versions and aliases, on JetStream KV and object store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import (
    DigestMismatchError,
    KeyWrongLastSequenceError,
    ObjectNotFoundError,
)
from nats.js.errors import NotFoundError as JsNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from nexus.api.models.v1 import events_pb2, model_registry_pb2
from nexus.common.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from nexus.common.events import DAY_S, GIB, EventBus, Stream
from nexus.common.idempotency import idempotent_call
from nexus.common.kv import KvEntry, KvFollower, kv_subject, open_key_value, open_object_store
from nexus.common.names import check_name, check_version
from nexus.common.paging import page_request, paginate
from nexus.common.registry import _signing
from nexus.common.registry._mirror import Mirror
from nexus.common.registry._records import (
    ARTIFACTS,
    BUCKET,
    PENDING,
    READY,
    VERSION,
    encode_alias,
    encode_version,
    kv_key,
    object_name,
    tombstone,
    version_key,
)
from nexus.common.registry._records import alias_key as _alias_key
from nexus.common.registry._types import (
    DEFAULT_ALIAS,
    AliasInfo,
    ModelChange,
    ModelInfo,
    ModelVersionInfo,
    Resolved,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MIB = 1024 * 1024
SIGNED_FRAMEWORKS: frozenset[str] = frozenset({"pickle", "sklearn", "joblib", "cloudpickle"})
"""Frameworks whose artifacts are pickles: accepted from outside only when signed by a registry
holding the same signing key."""
MAX_METADATA_BYTES = 64 * 1024
"""Largest version record (metrics, parameters, description) in the KV bucket."""
PROMOTED_WEIGHT = 100
"""The weight of the one version an alias points at after a promotion."""

_START_TIMEOUT_S = 30.0
_CLAIM_ATTEMPTS = 64
_SETTLE_TIMEOUT_S = 5.0
_OFF_LOOP_BYTES = MIB  # hash, verify or unpickle anything bigger in a thread
_OBJECTS_STREAM = f"OBJ_{ARTIFACTS}"
_DIRECT_CHUNKS = 8  # objects of up to this many chunks (128 KiB each) are read by direct gets
_KINDS = {
    "registered": events_pb2.MODEL_CHANGE_KIND_REGISTERED,
    "promoted": events_pb2.MODEL_CHANGE_KIND_PROMOTED,
    "split": events_pb2.MODEL_CHANGE_KIND_TRAFFIC_SPLIT,
    "version_deleted": events_pb2.MODEL_CHANGE_KIND_VERSION_DELETED,
    "deleted": events_pb2.MODEL_CHANGE_KIND_DELETED,
}

ChangeCallback = Callable[[ModelChange], Awaitable[None]]

STREAM = Stream("MODELS", ("nexus.models.>",), max_age_s=30 * DAY_S, max_bytes=GIB // 4)
"""The registry's `ModelChanged` events (`nexus.models.<service>.<kind>`): rare, small
notifications, and the KV bucket is the source of truth anyway, hence a month and 256 MiB."""

_BUCKET_CONFIG = api.KeyValueConfig(
    bucket=BUCKET,
    description="Nexus model registry: versions and aliases of every service",
    history=1,
    max_value_size=4 * MAX_METADATA_BYTES,
    storage=api.StorageType.FILE,
)
_ARTIFACTS_CONFIG = api.ObjectStoreConfig(
    description="Nexus model artifacts", storage=api.StorageType.FILE
)


@dataclass(frozen=True)
class PreparedUpload:
    """What an upload hook answers: the artifact to register, its framework (possibly another
    one: a checkpoint converted to ONNX), and parameters to record with the version."""

    artifact: bytes
    framework: str
    parameters: Mapping[str, str] = field(default_factory=dict)


UploadHook = Callable[[bytes], Awaitable[PreparedUpload]]
"""Checks (and may convert) an uploaded artifact; raises a NexusError to refuse it."""


class ModelRegistry:
    """The models of one service: immutable versions, movable aliases, A/B splits.

    Artifacts live in the JetStream object store, metadata in a KV bucket. Every replica keeps
    an in-memory mirror of its service's metadata, kept current by following the bucket's stream
    (resuming where it left off after a NATS restart), so `resolve` is a synchronous dictionary
    lookup and replicas converge within milliseconds of a change. Each change is also published
    as a `ModelChanged` event on `nexus.models.<service>.<kind>`.

    Args:
        bus: The event bus (its NATS connection also serves the KV bucket and object store).
        service: The service whose models these are ("anomaly").
        signing_key: HMAC key for the pickles the registry writes; empty disables pickles.
        max_artifact_bytes: Largest artifact accepted.
        upload_frameworks: The frameworks `upload` accepts from outside.
        upload_hooks: Per upload framework, a callback that checks (and may convert) what is
            uploaded before it is registered: it answers the artifact, framework and parameters
            to store, or raises (InvalidArgument) to refuse the upload. A framework with a hook
            is accepted for upload.
    """

    def __init__(
        self,
        bus: EventBus,
        service: str,
        *,
        signing_key: bytes,
        max_artifact_bytes: int = 512 * MIB,
        upload_frameworks: Collection[str] = (),
        upload_hooks: Mapping[str, UploadHook] | None = None,
    ) -> None:
        self._bus = bus
        self._service = check_name(service, "service")
        self._key = signing_key
        self._max_bytes = max_artifact_bytes
        self._hooks = dict(upload_hooks or {})
        self._upload_frameworks = frozenset(upload_frameworks) | self._hooks.keys()
        self._mirror = Mirror(self._service)
        self._callbacks: list[ChangeCallback] = []
        self._changes: asyncio.Queue[ModelChange] = asyncio.Queue()
        self._kv: KeyValue | None = None
        self._objects: ObjectStore | None = None
        self._follower: KvFollower | None = None
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def service(self) -> str:
        """The service whose models these are."""
        return self._service

    async def start(self) -> None:
        """Binds (or creates) the buckets and the MODELS stream, loads the mirror, and starts
        following changes.

        Raises:
            Unavailable: When NATS does not answer.
        """
        with _backend("start"):
            js = self._bus.js
            self._kv = await open_key_value(js, _BUCKET_CONFIG)
            self._objects = await open_object_store(js, ARTIFACTS, _ARTIFACTS_CONFIG)
            await self._bus.ensure_streams(STREAM)
            await self._follow()
        self._dispatcher = asyncio.create_task(
            self._dispatch(), name=f"registry-{self._service}-callbacks"
        )

    async def _follow(self) -> None:
        """Follows this service's keys: the latest of each first (the snapshot), then changes.
        Returns once the snapshot is in the mirror."""
        follower = KvFollower(self._bus.nc, BUCKET, self._on_entry, keys=f"{self._service}.>")
        self._follower = follower
        await follower.start(_START_TIMEOUT_S)

    async def stop(self) -> None:
        """Stops following changes; the mirror keeps its last state."""
        if self._follower is not None:
            await self._follower.stop()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)

    def on_change(self, callback: ChangeCallback) -> None:
        """Awaits `callback` after the mirror applied each change, in order, whichever replica
        made it. Changes found at `start` are not reported: `start` returns with them loaded.
        Deleting a model reports version_deleted for each version, then deleted. A callback that
        raises is logged; the next one still runs. Callbacks run in their own task, so they may
        call the registry themselves."""
        self._callbacks.append(callback)

    # Writing.

    async def register(
        self,
        name: str,
        artifact: bytes,
        *,
        framework: str,
        metrics: Mapping[str, float] | None = None,
        parameters: Mapping[str, str] | None = None,
        description: str = "",
    ) -> ModelVersionInfo:
        """Stores `artifact` as the model's next version ("1" for a new model).

        An idempotent call run again (its first run died, or lost its answer, after registering)
        gets the version that run registered instead of a second one.

        Raises:
            InvalidArgument: A bad name, an empty framework or artifact, a non-finite metric.
            ResourceExhausted: The artifact or its metadata is too large.
            Aborted: Too many registrations of this model raced; retry.
            Unavailable: NATS does not answer.
        """
        call = idempotent_call()
        if call and (made := self._mirror.made_by(name, call)) is not None:
            return made
        info = await self._new_version(name, artifact, framework, metrics, parameters, description)
        with _backend("register a version"):
            version, claim = await self._claim(info)
            info = replace(info, version=version)
            await self._store_artifact(info, artifact, claim)
        await self._announce("registered", name, version=version)
        return info

    async def register_object(
        self,
        name: str,
        obj: object,
        *,
        framework: str,
        metrics: Mapping[str, float] | None = None,
        parameters: Mapping[str, str] | None = None,
        description: str = "",
    ) -> ModelVersionInfo:
        """Pickles `obj`, signs it with the registry's key and registers it; see `register`.

        Raises:
            FailedPrecondition: When the registry has no signing key.
        """
        artifact = await asyncio.to_thread(_signing.dumps_signed, self._key, obj)
        return await self.register(
            name,
            artifact,
            framework=framework,
            metrics=metrics,
            parameters=parameters,
            description=description,
        )

    async def upload(
        self,
        name: str,
        artifact: bytes,
        *,
        framework: str,
        metrics: Mapping[str, float] | None = None,
        parameters: Mapping[str, str] | None = None,
        description: str = "",
    ) -> ModelVersionInfo:
        """Registers an artifact that came from outside (the UploadModel RPC).

        Only the service's `upload_frameworks` are accepted, and a pickle (a framework in
        `SIGNED_FRAMEWORKS`, or an artifact in the signed format) only with a valid signature.

        Raises:
            InvalidArgument: A framework this service does not accept.
            FailedPrecondition: A pickle whose signature does not verify.
        """
        if framework not in self._upload_frameworks:
            accepted = ", ".join(sorted(self._upload_frameworks)) or "none"
            raise InvalidArgument.for_field(
                "framework", f"{framework!r} is not accepted here (accepted: {accepted})"
            )
        if framework in SIGNED_FRAMEWORKS or _signing.is_signed(artifact):
            await _maybe_thread(
                len(artifact), lambda: _signing.verified_payload(self._key, artifact)
            )
        hook = self._hooks.get(framework)
        if hook is not None:
            _check_artifact(artifact, framework, self._max_bytes)
            prepared = await hook(artifact)
            artifact, framework = prepared.artifact, prepared.framework
            parameters = {**prepared.parameters, **(parameters or {})}
        return await self.register(
            name,
            artifact,
            framework=framework,
            metrics=metrics,
            parameters=parameters,
            description=description,
        )

    async def promote(self, name: str, version: str, alias: str = DEFAULT_ALIAS) -> AliasInfo:
        """Points `alias` at `version`, with all of its traffic.

        Raises:
            NotFound: No such model or version.
            InvalidArgument: A bad alias.
        """
        check_name(alias, "alias")
        self._version(name, version)
        splits = ((version, PROMOTED_WEIGHT),)
        return await self._set_alias(name, alias, splits, "promoted")

    async def set_traffic_split(
        self, name: str, alias: str, splits: Mapping[str, int]
    ) -> AliasInfo:
        """Splits the traffic of `alias` between versions by weight (sticky per routing key).

        Raises:
            NotFound: No such model, or a version that does not exist.
            InvalidArgument: A bad alias, no splits, a negative weight, or only zero weights.
        """
        check_name(alias, "alias")
        info = self.get_model_now(name)
        return await self._set_alias(name, alias, _checked_splits(info, splits), "split")

    async def delete_version(self, name: str, version: str) -> None:
        """Deletes one version and its artifact; its number is never given out again.

        Raises:
            NotFound: No such model or version.
            FailedPrecondition: An alias still routes to the version.
        """
        self._version(name, version)
        _refuse_if_aliased(self.get_model_now(name), version)
        key = version_key(self._service, name, version)
        with _backend("delete a version"):
            revision = await self._replace(key, tombstone())
            await self._delete_object(object_name(self._service, name, version))
        await self._settled(revision)
        await self._announce("version_deleted", name, version=version)

    async def delete_model(self, name: str) -> None:
        """Deletes a model: its versions, aliases and artifacts. A model registered later under
        the same name starts again at version 1.

        Raises:
            NotFound: No such model.
        """
        check_name(name, "name")
        keys = self._mirror.keys(name)  # aliases first: no alias outlives its versions
        if not keys:
            raise NotFound(f"model {name!r} is not registered in {self._service}")
        with _backend("delete a model"):
            revisions = [await self._purge(kv_key(self._service, key)) for key in keys]
            for key in keys:
                if key.kind == VERSION:
                    await self._delete_object(object_name(self._service, name, key.ident))
        await self._settled(max(revisions))
        await self._announce("deleted", name)

    # Reading.

    async def load_artifact(self, name: str, version: str) -> bytes:
        """The artifact of a version, after checking it against its recorded sha256.

        Raises:
            NotFound: No such model or version.
            FailedPrecondition: The artifact is missing or does not match its sha256.
        """
        info = self._version(name, version)
        with _backend("read an artifact"):
            data = await self._fetch(object_name(self._service, name, version))
        digest = await _maybe_thread(len(data), lambda: hashlib.sha256(data).hexdigest())
        if digest != info.sha256:
            raise FailedPrecondition(
                f"the artifact of {name!r} version {version} does not match its sha256",
                "CHECKSUM_MISMATCH",
            )
        return data

    async def load_object(self, name: str, version: str) -> object:
        """Unpickles a version written by `register_object`, after checking its sha256 and its
        signature; nothing else is ever unpickled.

        Raises:
            NotFound: No such model or version.
            FailedPrecondition: No signing key, a bad checksum, or a signature that does not
                verify (the bytes are then never unpickled).
        """
        if not self._key:
            raise FailedPrecondition(_signing.NO_KEY, "NO_SIGNING_KEY")
        data = await self.load_artifact(name, version)
        return await _maybe_thread(len(data), lambda: self.loads_signed(data))

    def loads_signed(self, artifact: bytes) -> object:
        """Unpickles an artifact that `register_object` wrote, after verifying its signature
        (blocking: a caller with an executor runs it there).

        Raises:
            FailedPrecondition: No signing key, or a signature that does not verify (the bytes
                are then never unpickled).
        """
        return _signing.loads_verified(self._key, artifact)

    async def get_model(self, name: str) -> ModelInfo:
        """One model with its versions and aliases.

        Raises:
            NotFound: No such model.
        """
        return self.get_model_now(name)

    def get_model_now(self, name: str) -> ModelInfo:
        """`get_model` without awaiting: what the mirror holds now."""
        info = self._mirror.model(check_name(name, "name"))
        if info is None:
            raise NotFound(f"model {name!r} is not registered in {self._service}")
        return info

    async def list_models(
        self, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[ModelInfo], str]:
        """One page of the service's models, by name (paged as `nexus.common.paging` says).

        Returns:
            The models, and the token of the next page ("" on the last one).

        Raises:
            InvalidArgument: A negative page size, or a token that no page of this list gave out.
        """
        page = page_request(page_size, page_token, scope=f"models/{self._service}")
        names, token = paginate(self._mirror.names(), str, page)
        return [info for name in names if (info := self._mirror.model(name))], token

    def resolve(
        self, name: str, *, alias: str = "", version: str = "", routing_key: str = ""
    ) -> Resolved:
        """Which version serves a request, from the in-memory mirror (no I/O).

        A pinned `version` wins. Otherwise `alias` ("production" by default) picks a version by
        weight: sticky per `routing_key` (a user or session id) when one is given, random if not.

        Raises:
            NotFound: No such model, version or alias (the message says what exists).
        """
        return self._mirror.resolve(name, alias, version, routing_key)

    # Internals.

    async def _new_version(
        self,
        name: str,
        artifact: bytes,
        framework: str,
        metrics: Mapping[str, float] | None,
        parameters: Mapping[str, str] | None,
        description: str,
    ) -> ModelVersionInfo:
        check_name(name, "name")
        _check_artifact(artifact, framework, self._max_bytes)
        info = ModelVersionInfo(
            service=self._service,
            name=name,
            version="",
            sha256=await _maybe_thread(len(artifact), lambda: hashlib.sha256(artifact).hexdigest()),
            framework=framework,
            metrics=_checked_metrics(metrics or {}),
            parameters={str(k): str(v) for k, v in (parameters or {}).items()},
            description=description,
            created=datetime.now(UTC),
            size_bytes=len(artifact),
            call=idempotent_call(),
        )
        if (size := len(encode_version(info, READY))) > MAX_METADATA_BYTES:
            raise ResourceExhausted.too_large("the version's metadata", size, MAX_METADATA_BYTES)
        return info

    async def _claim(self, info: ModelVersionInfo) -> tuple[str, int]:
        """Takes the next free version number with KV `create`, which fails when the key exists:
        of two registrations racing for a number, one wins and the other tries the next."""
        record = encode_version(info, PENDING)
        candidate = self._mirror.next_version(info.name)
        for _ in range(_CLAIM_ATTEMPTS):
            key = version_key(self._service, info.name, str(candidate))
            try:
                return str(candidate), await self._bucket().create(key, record)
            except KeyWrongLastSequenceError:
                candidate = max(candidate + 1, self._mirror.next_version(info.name))
        raise Aborted(f"too many concurrent registrations of {info.name!r}; retry")

    async def _store_artifact(self, info: ModelVersionInfo, artifact: bytes, claim: int) -> None:
        key = version_key(self._service, info.name, info.version)
        try:
            await self._store().put(object_name(self._service, info.name, info.version), artifact)
        except BaseException:
            with contextlib.suppress(NatsError, TimeoutError):  # the number stays taken, unused
                await self._bucket().update(key, tombstone(), last=claim)
            raise
        revision = await self._bucket().update(key, encode_version(info, READY), last=claim)
        await self._settled(revision)

    async def _set_alias(
        self, name: str, alias: str, splits: tuple[tuple[str, int], ...], change: str
    ) -> AliasInfo:
        info = AliasInfo(name, alias, splits, datetime.now(UTC))
        with _backend("set an alias"):
            revision = await self._bucket().put(
                _alias_key(self._service, name, alias), encode_alias(info, change)
            )
        await self._settled(revision)
        version = splits[0][0] if change == "promoted" else ""
        await self._announce(change, name, version=version, alias=alias, splits=splits)
        return info

    async def _replace(self, key: str, value: bytes) -> int:
        """Overwrites `key` unless someone else changed it since we read it."""
        entry = await self._bucket().get(key)
        try:
            return await self._bucket().update(key, value, last=entry.revision)
        except KeyWrongLastSequenceError as err:
            raise Aborted(f"{key} changed concurrently; retry") from err

    async def _purge(self, key: str) -> int:
        """Purges `key` (a KV purge marker, via JetStream to learn its revision)."""
        headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        ack = await self._bus.js.publish(kv_subject(BUCKET, key), b"", headers=headers)
        return ack.seq

    async def _fetch(self, name: str) -> bytes:
        """An object's bytes. A small one is read chunk by chunk with direct gets: the object
        store's `get` makes an ephemeral consumer per read, and a burst of cold loads of many
        small models would pile them up on the stream until the server refuses more."""
        try:
            info = await self._store().get_info(name)
            if (info.chunks or 0) <= _DIRECT_CHUNKS and info.nuid:
                return await self._direct_chunks(info.nuid, info.chunks or 0)
            sink = io.BytesIO()
            await self._store().get(name, writeinto=sink)
            return sink.getvalue()
        except (ObjectNotFoundError, JsNotFoundError) as err:
            raise FailedPrecondition(f"the artifact {name} is missing", "ARTIFACT_MISSING") from err
        except DigestMismatchError as err:
            raise FailedPrecondition(
                f"the artifact {name} is corrupt", "CHECKSUM_MISMATCH"
            ) from err

    async def _direct_chunks(self, nuid: str, chunks: int) -> bytes:
        subject = f"$O.{ARTIFACTS}.C.{nuid}"
        parts: list[bytes] = []
        seq = 1
        for _ in range(chunks):
            msg = await self._bus.js.get_msg(
                _OBJECTS_STREAM, seq=seq, subject=subject, direct=True, next=True
            )
            parts.append(msg.data or b"")
            seq = (msg.seq or seq) + 1
        return b"".join(parts)

    async def _delete_object(self, name: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            await self._store().delete(name)

    def _version(self, name: str, version: str) -> ModelVersionInfo:
        info = self.get_model_now(name)
        check_version(version)
        for candidate in info.versions:
            if candidate.version == version:
                return candidate
        raise NotFound(f"model {name!r} has no version {version}")

    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise FailedPrecondition("the model registry is not started")
        return self._kv

    def _store(self) -> ObjectStore:
        if self._objects is None:
            raise FailedPrecondition("the model registry is not started")
        return self._objects

    # Following changes.

    async def _on_entry(self, entry: KvEntry) -> None:
        """Applies one KV entry to the mirror; reports it unless it is part of the snapshot."""
        change = self._mirror.apply(entry.key, entry.value, removed=entry.removed)
        if change is not None and not entry.initial:
            self._changes.put_nowait(change)

    async def _settled(self, revision: int) -> None:
        """Waits until the mirror applied `revision`, so that a caller reads its own write."""
        if self._follower is None:
            raise FailedPrecondition("the model registry is not started")
        if not await self._follower.settled(revision, _SETTLE_TIMEOUT_S):
            log.warning("registry mirror of %s lags behind revision %d", self._service, revision)

    async def _dispatch(self) -> None:
        while True:
            change = await self._changes.get()
            for callback in list(self._callbacks):
                try:
                    await callback(change)
                except Exception:
                    log.exception("on_change callback failed on %s", change)

    async def _announce(
        self,
        kind: str,
        name: str,
        *,
        version: str = "",
        alias: str = "",
        splits: tuple[tuple[str, int], ...] = (),
    ) -> None:
        """Publishes the ModelChanged event. The change is already stored (replicas follow the
        KV bucket), so a failure here is logged, not raised."""
        event = events_pb2.ModelChanged(
            service=self._service,
            name=name,
            version=version,
            alias=alias,
            kind=_KINDS[kind],
            splits=[model_registry_pb2.TrafficSplit(version=v, weight=w) for v, w in splits],
        )
        try:
            await self._bus.publish(
                f"nexus.models.{self._service}.{kind}", event, subject_hint=name
            )
        except Unavailable:
            log.exception(
                "registry change %s of %s is stored but its event was not sent", kind, name
            )


@contextlib.contextmanager
def _backend(what: str) -> Iterator[None]:
    """Turns NATS failures into Unavailable: the client may retry."""
    try:
        yield
    except (NatsError, TimeoutError) as err:
        raise Unavailable(f"model registry cannot {what} now: {err!r}") from err


async def _maybe_thread(size: int, work: Callable[[], T]) -> T:
    """Runs `work` in a thread when `size` bytes make it slow, else right here."""
    if size > _OFF_LOOP_BYTES:
        return await asyncio.to_thread(work)
    return work()


def _check_artifact(artifact: bytes, framework: str, limit: int) -> None:
    if not framework:
        raise InvalidArgument.for_field("framework", "must not be empty")
    if not artifact:
        raise InvalidArgument.for_field("artifact", "must not be empty")
    if len(artifact) > limit:
        raise ResourceExhausted.too_large("the artifact", len(artifact), limit)


def _checked_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    checked = {}
    for name, value in metrics.items():
        if not name or not math.isfinite(value):
            raise InvalidArgument.for_field(f"metrics[{name}]", "must be a finite number")
        checked[str(name)] = float(value)
    return checked


def _checked_splits(model: ModelInfo, splits: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    if not splits:
        raise InvalidArgument.for_field("splits", "must name at least one version")
    existing = {v.version for v in model.versions}
    for version, weight in splits.items():
        if version not in existing:
            raise NotFound(f"model {model.name!r} has no version {version}")
        if weight < 0:
            raise InvalidArgument.for_field(f"splits[{version}].weight", "must not be negative")
    if sum(splits.values()) <= 0:
        raise InvalidArgument.for_field("splits", "weights must not all be zero")
    return tuple(sorted(((v, int(w)) for v, w in splits.items()), key=lambda s: int(s[0])))


def _refuse_if_aliased(model: ModelInfo, version: str) -> None:
    aliases = [a.alias for a in model.aliases if any(v == version for v, _ in a.splits)]
    if aliases:
        raise FailedPrecondition(
            f"version {version} of {model.name!r} is in alias(es) {', '.join(aliases)}; "
            "point them elsewhere first",
            "VERSION_IN_USE",
        )
