"""Catalogs and items in JetStream KV buckets, mirrored in memory by every replica.

Catalogs: bucket `nexus_recommender_catalogs`, key = the catalog's name, a JSON record.
Items: bucket `nexus_recommender_items`, key `<catalog>.<item id, base64url>`, a JSON record
(attributes and text); the mirror indexes them by catalog for filters and reasons.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js import api

from nexus.common.errors import AlreadyExists, NotFound
from nexus.common.events import MIB
from nexus.common.kv import KvRecords

CATALOGS_BUCKET = "nexus_recommender_catalogs"
ITEMS_BUCKET = "nexus_recommender_items"


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


class ItemStore:
    """Items of every catalog, indexed by catalog in memory."""

    def __init__(self, nc: Client) -> None:
        config = _config(ITEMS_BUCKET, "Nexus recommender items: attributes and text")
        self._records = KvRecords(nc, config, ItemRecord.decode)
        self._index: dict[str, dict[str, ItemRecord]] = {}
        self._changes: dict[str, int] = {}
        self._records.on_change(self._apply)

    async def start(self) -> None:
        """Opens the bucket and loads the mirror."""
        await self._records.start()

    async def stop(self) -> None:
        """Stops following."""
        await self._records.stop()

    async def put(self, item: ItemRecord) -> None:
        """Creates or replaces an item."""
        raw = item.encode()
        await self._records.update(item_key(item.catalog, item.id), lambda _: raw, "store item")
        self._apply(item)

    def of(self, catalog: str) -> Mapping[str, ItemRecord]:
        """A catalog's items, by id (the live mirror: read it, don't keep it)."""
        return self._index.get(catalog, {})

    def changes(self, catalog: str) -> int:
        """How many item changes this replica applied to a catalog (for caches)."""
        return self._changes.get(catalog, 0)

    def _apply(self, item: ItemRecord) -> None:
        self._index.setdefault(item.catalog, {})[item.id] = item
        self._changes[item.catalog] = self._changes.get(item.catalog, 0) + 1


def item_key(catalog: str, item_id: str) -> str:
    """The KV key of an item (ids may hold any character; keys may not)."""
    encoded = base64.urlsafe_b64encode(item_id.encode()).decode().rstrip("=")
    return f"{catalog}.{encoded or '_'}"


def catalog_missing(name: str) -> NotFound:
    """The error of an unknown catalog."""
    return NotFound(f"catalog {name!r} not found")
