"""Every collection as the KV bucket says, applied one KV entry at a time in stream order."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nexus.llm.search._index import VectorIndex
from nexus.llm.search._records import (
    Definition,
    Key,
    decode_definition,
    decode_document,
    parse_key,
)
from nexus.llm.search._types import CollectionInfo

log = logging.getLogger(__name__)


@dataclass
class Collection:
    """One collection in memory: its definition and its documents.

    Attributes:
        definition: What it is.
        index: Its documents and vectors.
        revision: The stream sequence of its definition (for compare-and-delete).
    """

    definition: Definition
    index: VectorIndex
    revision: int

    def info(self) -> CollectionInfo:
        """Its public description, with the current document count."""
        return self.definition.info(len(self.index))


class SearchMirror:
    """The collections of the bucket, fed by a follower of its stream.

    Definitions are never rewritten, so in stream order a collection's definition comes before
    its documents; a document of a generation that is not the collection's current one belongs
    to a deleted collection and is ignored.
    """

    def __init__(self) -> None:
        self._collections: dict[str, Collection] = {}
        self.orphans: set[tuple[str, str]] = set()
        """(collection, generation) of documents seen that belong to a deleted collection (a
        write that raced the deletion, or one interrupted): theirs to purge."""

    def __len__(self) -> int:
        return len(self._collections)

    def get(self, name: str) -> Collection | None:
        """The collection, or None."""
        return self._collections.get(name)

    def names(self) -> list[str]:
        """The collections' names, sorted."""
        return sorted(self._collections)

    async def prepare(self, key: str, *, removed: bool) -> None:
        """Readies the index that the KV entry of `key` changes (see `VectorIndex.prepare`);
        `apply` the entry right after, without awaiting in between."""
        parsed = parse_key(key)
        if parsed is None or not parsed.is_document:
            return
        collection = self._collections.get(parsed.name)
        if collection is not None and collection.definition.generation == parsed.generation:
            await collection.index.prepare(parsed.doc_id, removing=removed)

    def apply(self, key: str, value: bytes, *, removed: bool, revision: int) -> None:
        """Applies one KV entry: a put, or a delete/purge when `removed`. Malformed entries are
        logged and skipped."""
        parsed = parse_key(key)
        if parsed is None:
            log.error("ignoring the search record with the foreign key %s", key)
            return
        try:
            if parsed.is_document:
                self._apply_document(parsed, value, removed=removed)
            else:
                self._apply_definition(parsed, value, removed=removed, revision=revision)
        except (ValueError, KeyError, TypeError) as err:
            log.error("ignoring the malformed search record %s: %r", key, err)

    def _apply_definition(self, key: Key, value: bytes, *, removed: bool, revision: int) -> None:
        if removed:
            self._collections.pop(key.name, None)
            return
        definition = decode_definition(value)
        current = self._collections.get(key.name)
        if current is not None and current.definition.generation == definition.generation:
            return  # replayed
        index = VectorIndex(definition.dimensions)
        self._collections[key.name] = Collection(definition, index, revision)

    def _apply_document(self, key: Key, value: bytes, *, removed: bool) -> None:
        collection = self._collections.get(key.name)
        if collection is None or collection.definition.generation != key.generation:
            # Definitions precede their documents in the stream, so this one's is gone.
            self.orphans.add((key.name, key.generation))
            return
        if removed:
            collection.index.remove(key.doc_id)
            return
        document, vector = decode_document(value)
        if document.id != key.doc_id:
            raise ValueError(f"the record holds document {document.id!r}")
        collection.index.put(document, vector)
