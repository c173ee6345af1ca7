"""How the registry lays out its KV bucket: keys, and the JSON records under them.

Keys (one bucket for every service):
    <service>.<name>.v.<version>      a version record: metadata and state
    <service>.<name>.alias.<alias>    an alias record: its splits

A version record's state is "pending" while its artifact uploads (the number is taken, nothing
is served), "ready" after, and "deleted" once deleted: the record stays as a tombstone so that
KV `create` never hands out the number again. Deleting a model purges its keys instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from nexus.common.registry._types import AliasInfo, ModelVersionInfo

BUCKET = "nexus_models"
ARTIFACTS = "nexus_artifacts"
VERSION, ALIAS = "v", "alias"
PENDING, READY, DELETED = "pending", "ready", "deleted"


@dataclass(frozen=True)
class Key:
    """A parsed KV key of one service's registry."""

    name: str
    kind: str  # VERSION or ALIAS
    ident: str  # the version number or the alias


def version_key(service: str, name: str, version: str) -> str:
    """The KV key of a version record."""
    return f"{service}.{name}.{VERSION}.{version}"


def alias_key(service: str, name: str, alias: str) -> str:
    """The KV key of an alias record."""
    return f"{service}.{name}.{ALIAS}.{alias}"


def kv_key(service: str, key: Key) -> str:
    """The KV key of a parsed key."""
    return f"{service}.{key.name}.{key.kind}.{key.ident}"


def object_name(service: str, name: str, version: str) -> str:
    """The object-store name of a version's artifact."""
    return f"{service}/{name}/{version}"


def parse_key(service: str, key: str) -> Key | None:
    """The parts of `key`, or None when it is not a well-formed key of `service`."""
    parts = key.split(".")
    if len(parts) != 4 or parts[0] != service or parts[2] not in (VERSION, ALIAS):
        return None
    return Key(name=parts[1], kind=parts[2], ident=parts[3])


def encode_version(info: ModelVersionInfo, state: str) -> bytes:
    """The JSON record of a version in `state`."""
    record = {
        "state": state,
        "sha256": info.sha256,
        "framework": info.framework,
        "metrics": dict(info.metrics),
        "parameters": dict(info.parameters),
        "description": info.description,
        "created": info.created.isoformat(),
        "size_bytes": info.size_bytes,
        "call": info.call,
    }
    return json.dumps(record, sort_keys=True).encode()


def decode_version(service: str, key: Key, raw: bytes) -> tuple[str, ModelVersionInfo | None]:
    """The state of a version record, and its info unless it is a tombstone.

    Raises:
        ValueError, KeyError, TypeError: On a malformed record.
    """
    record: dict[str, Any] = json.loads(raw)
    state = str(record["state"])
    if state == DELETED:
        return state, None
    info = ModelVersionInfo(
        service=service,
        name=key.name,
        version=key.ident,
        sha256=str(record["sha256"]),
        framework=str(record["framework"]),
        metrics={str(k): float(v) for k, v in record["metrics"].items()},
        parameters={str(k): str(v) for k, v in record["parameters"].items()},
        description=str(record["description"]),
        created=datetime.fromisoformat(record["created"]),
        size_bytes=int(record["size_bytes"]),
        call=str(record.get("call", "")),  # absent from records of older versions
    )
    return state, info


def tombstone() -> bytes:
    """The record of a deleted version."""
    return json.dumps({"state": DELETED}).encode()


def encode_alias(info: AliasInfo, change: str) -> bytes:
    """The JSON record of an alias; `change` (promoted | split) says how it was last set."""
    record = {
        "splits": [list(pair) for pair in info.splits],
        "updated": info.updated.isoformat(),
        "change": change,
    }
    return json.dumps(record).encode()


def decode_alias(key: Key, raw: bytes) -> tuple[str, AliasInfo]:
    """How an alias was last set, and its info.

    Raises:
        ValueError, KeyError, TypeError: On a malformed record.
    """
    record: dict[str, Any] = json.loads(raw)
    splits = tuple((str(v), int(w)) for v, w in record["splits"])
    updated = datetime.fromisoformat(record["updated"])
    return str(record["change"]), AliasInfo(key.name, key.ident, splits, updated)
