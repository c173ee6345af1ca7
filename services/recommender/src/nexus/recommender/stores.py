"""Catalogs, items, users and rules in JetStream KV buckets, mirrored in memory by every replica.

Catalogs: bucket `nexus_recommender_catalogs`, key = the catalog's name, a JSON record.
Items: bucket `nexus_recommender_items`, key `<catalog>.<item id, base64url>`, a JSON record
(attributes and text); the mirror indexes them by catalog for filters and reasons.
Users: bucket `nexus_recommender_users`, key `<catalog>.<user id, base64url>`, a JSON record
(attributes), indexed by catalog for segments.
Rules: bucket `nexus_recommender_rules`, key = the catalog's name, all its rules in one JSON
record (SetRules replaces them at once, so a replica never applies half of a change).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from nats.aio.client import Client
from nats.js import api

from nexus.common.errors import AlreadyExists, NotFound
from nexus.common.events import MIB
from nexus.common.kv import KvRecords
from nexus.recommender.recommending import (
    Boost,
    Cap,
    Effect,
    Exclude,
    Match,
    Pin,
    Rule,
    RuleSet,
    Window,
)

CATALOGS_BUCKET = "nexus_recommender_catalogs"
ITEMS_BUCKET = "nexus_recommender_items"
USERS_BUCKET = "nexus_recommender_users"
RULES_BUCKET = "nexus_recommender_rules"


@dataclass(frozen=True)
class CatalogInfo:
    """A catalog as stored."""

    name: str
    description: str = ""
    created: datetime = field(default_factory=lambda: datetime.now(UTC))

    def encode(self) -> bytes:
        """The stored JSON."""
        return json.dumps(
            {
                "name": self.name,
                "description": self.description,
                "created": self.created.isoformat(),
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CatalogInfo:
        """From the stored JSON."""
        data = json.loads(raw)
        return cls(data["name"], data["description"], datetime.fromisoformat(data["created"]))


@dataclass(frozen=True)
class ItemRecord:
    """An item of a catalog: attributes (for filters) and text."""

    catalog: str
    id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    text: str = ""

    @property
    def title(self) -> str:
        """What reasons call it: its "title" attribute, else its id."""
        return self.attributes.get("title") or self.id

    def encode(self) -> bytes:
        """The stored JSON."""
        record = {"catalog": self.catalog, "id": self.id, "attributes": dict(self.attributes)}
        return json.dumps(record | {"text": self.text}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ItemRecord:
        """From the stored JSON."""
        data = json.loads(raw)
        return cls(data["catalog"], data["id"], data["attributes"], data["text"])


@dataclass(frozen=True)
class UserRecord:
    """A user of a catalog: attributes (for segments)."""

    catalog: str
    id: str
    attributes: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The stored JSON."""
        return json.dumps(
            {"catalog": self.catalog, "id": self.id, "attributes": dict(self.attributes)}
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> UserRecord:
        """From the stored JSON."""
        data = json.loads(raw)
        return cls(data["catalog"], data["id"], data["attributes"])


@dataclass(frozen=True)
class CatalogRules:
    """A catalog's rules as stored, and when (None: never set)."""

    catalog: str
    rules: RuleSet = field(default_factory=RuleSet)
    updated: datetime | None = None

    def encode(self) -> bytes:
        """The stored JSON."""
        updated = self.updated.isoformat() if self.updated else None
        rules = [_rule_json(r) for r in self.rules.rules]
        return json.dumps({"catalog": self.catalog, "rules": rules, "updated": updated}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> CatalogRules:
        """From the stored JSON."""
        data = json.loads(raw)
        updated = datetime.fromisoformat(data["updated"]) if data["updated"] else None
        return cls(data["catalog"], RuleSet(tuple(map(_rule_of, data["rules"]))), updated)


def _match_json(match: Match) -> dict[str, Any]:
    return {"key": match.key, "values": sorted(match.values)}


def _effect_json(effect: Effect) -> dict[str, Any]:
    match effect:
        case Boost():
            return {"boost": _match_json(effect.match) | {"shift": effect.shift}}
        case Pin():
            return {"pin": {"item": effect.item, "position": effect.position}}
        case Cap():
            return {"cap": {"key": effect.key, "limit": effect.limit}}
        case Exclude():
            return {"exclude": _match_json(effect.match)}


def _rule_json(rule: Rule) -> dict[str, Any]:
    window = {"start": rule.window.start, "end": rule.window.end}
    return {"name": rule.name} | window | _effect_json(rule.effect)


def _match_of(data: dict[str, Any]) -> Match:
    return Match(data["key"], frozenset(data["values"]))


def _effect_of(data: dict[str, Any]) -> Effect:
    if "boost" in data:
        return Boost(_match_of(data["boost"]), data["boost"]["shift"])
    if "pin" in data:
        return Pin(data["pin"]["item"], data["pin"]["position"])
    if "cap" in data:
        return Cap(data["cap"]["key"], data["cap"]["limit"])
    return Exclude(_match_of(data["exclude"]))


def _rule_of(data: dict[str, Any]) -> Rule:
    return Rule(data["name"], _effect_of(data), Window(data["start"], data["end"]))


def _config(bucket: str, description: str) -> api.KeyValueConfig:
    return api.KeyValueConfig(
        bucket=bucket,
        description=description,
        history=1,
        max_value_size=MIB,
        storage=api.StorageType.FILE,
    )


class CatalogStore:
    """The catalogs of every tenant."""

    def __init__(self, nc: Client) -> None:
        config = _config(CATALOGS_BUCKET, "Nexus recommender catalogs")
        self._records = KvRecords(nc, config, CatalogInfo.decode)
        self._known: dict[str, CatalogInfo] = {}
        self._records.on_change(lambda info: self._known.__setitem__(info.name, info))

    async def start(self) -> None:
        """Opens the bucket and loads the mirror."""
        await self._records.start()

    async def stop(self) -> None:
        """Stops following."""
        await self._records.stop()

    async def create(self, info: CatalogInfo) -> CatalogInfo:
        """Stores a new catalog.

        Raises:
            AlreadyExists: The name is taken.
        """
        raw = info.encode()
        stored = await self._records.update(
            info.name, lambda current: None if current else raw, f"create catalog {info.name}"
        )
        if stored != info:
            raise AlreadyExists(f"catalog {info.name!r} exists")
        self._known[info.name] = info
        return info

    async def get(self, name: str) -> CatalogInfo:
        """A catalog: from the mirror, else from the bucket (another replica just made it).

        Raises:
            NotFound: No such catalog.
        """
        if (info := self._known.get(name)) is not None:
            return info
        found = await self._records.get(name, f"read catalog {name}")
        if found is None:
            raise catalog_missing(name)
        return found.record

    async def all(self) -> list[CatalogInfo]:
        """Every catalog, by name, as every replica wrote them."""
        return sorted(await self._records.synced("list catalogs"), key=lambda c: c.name)


class Record(Protocol):
    """What PerCatalog stores: a record of one catalog, by id, with attributes."""

    @property
    def catalog(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, str]: ...
    def encode(self) -> bytes: ...


R = TypeVar("R", bound=Record)


class PerCatalog(Generic[R]):
    """Records of every catalog (items, users), indexed by catalog and id in memory."""

    def __init__(self, nc: Client, bucket: str, description: str, decode: Any) -> None:
        self._records: KvRecords[R] = KvRecords(nc, _config(bucket, description), decode)
        self._index: dict[str, dict[str, R]] = {}
        self._changes: dict[str, int] = {}
        self._records.on_change(self._apply)

    async def start(self) -> None:
        """Opens the bucket and loads the mirror."""
        await self._records.start()

    async def stop(self) -> None:
        """Stops following."""
        await self._records.stop()

    async def put(self, record: R) -> None:
        """Creates or replaces a record."""
        raw = record.encode()
        key = item_key(record.catalog, record.id)
        await self._records.update(key, lambda _: raw, f"store {record.id!r}")
        self._apply(record)

    def of(self, catalog: str) -> Mapping[str, R]:
        """A catalog's records, by id (the live mirror: read it, don't keep it)."""
        return self._index.get(catalog, {})

    def changes(self, catalog: str) -> int:
        """How many record changes this replica applied to a catalog (for caches)."""
        return self._changes.get(catalog, 0)

    def _apply(self, record: R) -> None:
        self._index.setdefault(record.catalog, {})[record.id] = record
        self._changes[record.catalog] = self._changes.get(record.catalog, 0) + 1


class ItemStore(PerCatalog[ItemRecord]):
    """Items of every catalog: attributes and text."""

    def __init__(self, nc: Client) -> None:
        description = "Nexus recommender items: attributes and text"
        super().__init__(nc, ITEMS_BUCKET, description, ItemRecord.decode)


class UserStore(PerCatalog[UserRecord]):
    """Users of every catalog: attributes."""

    def __init__(self, nc: Client) -> None:
        description = "Nexus recommender users: attributes"
        super().__init__(nc, USERS_BUCKET, description, UserRecord.decode)


class RuleStore:
    """The business rules of every catalog, mirrored in memory."""

    def __init__(self, nc: Client) -> None:
        config = _config(RULES_BUCKET, "Nexus recommender business rules per catalog")
        self._records = KvRecords(nc, config, CatalogRules.decode)
        self._known: dict[str, CatalogRules] = {}
        self._records.on_change(self._apply)

    async def start(self) -> None:
        """Opens the bucket and loads the mirror."""
        await self._records.start()

    async def stop(self) -> None:
        """Stops following."""
        await self._records.stop()

    async def put(self, rules: CatalogRules) -> None:
        """Replaces a catalog's rules."""
        raw = rules.encode()
        await self._records.update(rules.catalog, lambda _: raw, "store rules")
        self._apply(rules)

    async def read(self, catalog: str) -> CatalogRules:
        """A catalog's rules as stored now (one round trip: whichever replica set them)."""
        found = await self._records.get(catalog, f"read the rules of {catalog}")
        return found.record if found is not None else CatalogRules(catalog)

    def of(self, catalog: str) -> CatalogRules:
        """A catalog's rules as this replica holds them (none: an empty set)."""
        return self._known.get(catalog) or CatalogRules(catalog)

    def _apply(self, rules: CatalogRules) -> None:
        self._known[rules.catalog] = rules


def item_key(catalog: str, item_id: str) -> str:
    """The KV key of an item or a user (ids may hold any character; keys may not)."""
    encoded = base64.urlsafe_b64encode(item_id.encode()).decode().rstrip("=")
    return f"{catalog}.{encoded or '_'}"


def catalog_missing(name: str) -> NotFound:
    """The error of an unknown catalog."""
    return NotFound(f"catalog {name!r} not found")
