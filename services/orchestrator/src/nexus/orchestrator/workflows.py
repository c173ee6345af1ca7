"""Registered workflows: every version of every definition, in a JetStream KV bucket.

Key `<name>.v<version>`: one version, immutable (made with KV create, so two replicas that
register at once get two versions, never one overwritten); `<name>.latest`: the highest version,
moved forward with compare-and-set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js import api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from nexus.common.caching import TTLCache
from nexus.common.errors import Aborted, NotFound
from nexus.common.events import MIB
from nexus.common.kv import (
    kv_stream,
    kv_subject,
    nats_unavailable,
    open_key_value,
    update_entry,
)
from nexus.common.paging import page_request, paginate
from nexus.orchestrator.definitions import Definition, parse_definition
from nexus.orchestrator.definitions.parsing import load_definition

BUCKET = "nexus_orchestrator_workflows"
LATEST = "latest"
_CONFIG = api.KeyValueConfig(
    bucket=BUCKET,
    description="Nexus orchestrator: workflow definitions, every version",
    history=1,
    max_value_size=MIB,
    storage=api.StorageType.FILE,
)
_KEEP_VERSIONS = 256


@dataclass(frozen=True)
class WorkflowVersion:
    """One registered version of a workflow."""

    name: str
    version: int
    description: str
    definition: str
    format: str
    owner_key_id: str
    created: float
    step_ids: tuple[str, ...]

    def parsed(self) -> Definition:
        """The definition, checked when it was registered (cached per version by the caller)."""
        return load_definition(self.definition, self.format)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> WorkflowVersion:
        raw = json.loads(data)
        return cls(**{**raw, "step_ids": tuple(raw["step_ids"])})


class WorkflowStore:
    """The workflows of the deployment.

    Args:
        nc: The NATS connection.
        check: What a definition must pass against the deployment before it is stored (the
            streams of its event triggers), beyond the checks of `parse_definition`.
    """

    def __init__(
        self, nc: Client, check: Callable[[Definition], Awaitable[None]] | None = None
    ) -> None:
        self._nc = nc
        self._check = check
        self._kv: KeyValue | None = None
        self._parsed: dict[tuple[str, int], Definition] = {}
        self._versions: TTLCache[tuple[str, int], WorkflowVersion] = TTLCache(
            "orchestrator_workflow_versions", maxsize=_KEEP_VERSIONS
        )

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv

    async def start(self) -> None:
        """Opens the bucket."""
        with nats_unavailable("open the workflows bucket"):
            self._kv = await open_key_value(self._nc.jetstream(), _CONFIG)

    async def stop(self) -> None:
        """Nothing to stop (the bucket lives in NATS)."""

    async def register(self, text: str, fmt: str, owner_key_id: str) -> WorkflowVersion:
        """Checks a definition and stores it as the workflow's next version.

        Raises:
            InvalidArgument: The definition does not validate (field, line).
            Unavailable: NATS does not answer.
        """
        definition, fmt = parse_definition(text, fmt)
        if self._check is not None:
            await self._check(definition)
        with nats_unavailable("register a workflow"):
            version = await self._latest(definition.name) + 1
            while True:
                record = _version(definition, text, fmt, owner_key_id, version)
                try:
                    await self.kv.create(f"{definition.name}.v{version}", record.encode())
                    break
                except KeyWrongLastSequenceError:  # another replica took this number
                    version += 1
            await update_entry(self.kv, f"{definition.name}.{LATEST}", _at_least(version))
        self._parsed[(record.name, record.version)] = definition
        return record

    async def delete(self, name: str) -> int:
        """Deletes a workflow: its `latest` key goes, which stops its triggers on every replica
        (they follow those keys) and hides it from `get` of the latest version, `list_latest`
        and new runs; its versions stay, for the runs in flight. Returns the last version.

        Raises:
            NotFound: No such workflow (or deleted already).
            Aborted: A version was registered meanwhile.
            Unavailable: NATS does not answer.
        """
        with nats_unavailable("delete a workflow"):
            try:
                entry = await self.kv.get(f"{name}.{LATEST}")
            except KeyNotFoundError:
                entry = None
            if entry is None or not entry.value:
                raise NotFound(f"workflow {name!r} not found")
            try:  # only the value read: a version registered meanwhile is not deleted unseen
                await self.kv.delete(f"{name}.{LATEST}", last=entry.revision)
            except KeyWrongLastSequenceError as err:
                raise Aborted(f"workflow {name!r} changed while being deleted; retry") from err
        return int(entry.value)

    async def get(self, name: str, version: int = 0) -> WorkflowVersion:
        """One version of a workflow (0: the latest). Versions are immutable, so each is read
        from the bucket once per process (the latest version's number is read every time).

        Raises:
            NotFound: No such workflow or version (a deleted workflow's versions are read only
                by number).
        """
        with nats_unavailable("read a workflow"):
            number = version or await self._latest(name)
            known = self._versions.get((name, number))
            if known is not None:
                return known
            try:
                entry = await self.kv.get(f"{name}.v{number}") if number else None
            except KeyNotFoundError:
                entry = None
        if entry is None or not entry.value:
            what = f"workflow {name!r}" + (f" version {version}" if version else "")
            raise NotFound(f"{what} not found")
        stored = WorkflowVersion.decode(entry.value)
        self._versions.set((name, number), stored)
        return stored

    async def stored_at(self, workflow: WorkflowVersion) -> datetime:
        """When NATS stored the version, by the server's clock (what a consumer's start time
        is compared with, so that the clocks of replicas do not matter).

        Raises:
            Unavailable: NATS does not answer.
        """
        subject = kv_subject(BUCKET, f"{workflow.name}.v{workflow.version}")
        with nats_unavailable("read when a workflow was stored"):
            stored = await self._nc.jetstream().get_last_msg(kv_stream(BUCKET), subject)
        return stored.time or datetime.fromtimestamp(workflow.created, UTC)

    def definition(self, workflow: WorkflowVersion) -> Definition:
        """The checked definition of a version (parsed once per process)."""
        key = (workflow.name, workflow.version)
        if key not in self._parsed:
            self._parsed[key] = workflow.parsed()
        return self._parsed[key]

    def cached(self, name: str, version: int) -> Definition | None:
        """The checked definition of a version when this process parsed it already."""
        return self._parsed.get((name, version))

    async def list_latest(
        self, page_size: int, page_token: str
    ) -> tuple[list[WorkflowVersion], str]:
        """A page of the workflows' latest versions, by name.

        Raises:
            InvalidArgument: A bad page size or token.
        """
        page = page_request(page_size, page_token, scope="workflows")
        with nats_unavailable("list workflows"):
            try:
                keys = await self.kv.keys()
            except NoKeysError:
                keys = []
        names = sorted(k.removesuffix(f".{LATEST}") for k in keys if k.endswith(f".{LATEST}"))
        chosen, token = paginate(names, lambda name: name, page)
        return [await self.get(name) for name in chosen], token

    async def _latest(self, name: str) -> int:
        try:
            entry = await self.kv.get(f"{name}.{LATEST}")
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")


def _version(
    definition: Definition, text: str, fmt: str, owner_key_id: str, version: int
) -> WorkflowVersion:
    return WorkflowVersion(
        name=definition.name,
        version=version,
        description=definition.description,
        definition=text,
        format=fmt,
        owner_key_id=owner_key_id,
        created=time.time(),
        step_ids=tuple(definition.steps),
    )


def _at_least(version: int):  # type: ignore[no-untyped-def]
    def change(raw: bytes | None) -> bytes | None:
        current = int(raw or b"0")
        return str(version).encode() if version > current else None

    return change
