"""CollectionStore: named collections of embedded documents on a JetStream KV bucket, searched in
an in-memory mirror on every replica."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import APIError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nexus.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from nexus.common.idempotency import idempotent_call, ran_before
from nexus.common.kv import KvEntry, KvFollower, open_key_value
from nexus.common.names import check_name
from nexus.llm.embeddings import EmbeddingModels, check_text, unit_rows
from nexus.llm.search._filters import compile_filter
from nexus.llm.search._index import rank
from nexus.llm.search._mirror import Collection, SearchMirror
from nexus.llm.search._records import (
    BUCKET,
    PREFIX,
    STREAM,
    Definition,
    check_id,
    collection_key,
    document_key,
    documents_subject,
    encode_definition,
    encode_document,
    metadata_json,
    new_generation,
    record_head,
    record_size,
)
from nexus.llm.search._types import CollectionInfo, Document, Hit
from nexus.llm.settings import LlmSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TOP_K = 5
"""Hits a search returns unless told otherwise."""

_START_TIMEOUT_S = 120.0  # replaying a large bucket takes a while
_SYNC_TIMEOUT_S = 5.0  # longest a request waits for the mirror to catch up
_WRITE_CONCURRENCY = 64  # KV puts in flight at once
_INLINE_SCORES = 1 << 18  # score smaller collections (rows x dims) on the event loop
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's error codes of a failed compare-and-set


class CollectionStore:
    """Named collections of documents, embedded with the collection's model, searched by cosine
    similarity with metadata filters.

    Everything is stored in the KV bucket `nexus_llm_search`, so collections survive restarts
    and every replica serves the same ones. Each replica follows the bucket's stream into an
    in-memory mirror (replaying it on start). Writes wait until this replica's mirror holds them;
    reads first wait until it holds everything in the bucket at the time of the request, so a
    document written through any replica is found by the next search on any other.

    Args:
        nc: The NATS connection (JetStream enabled): the connection itself, not a JetStream
            context, because the mirror follows the bucket with `nexus.common.events.Follower`.
        embeddings: The embedding models.
        settings: The limits.
    """

    def __init__(self, nc: Client, embeddings: EmbeddingModels, settings: LlmSettings) -> None:
        if not isinstance(nc, Client):
            raise TypeError(f"CollectionStore takes the NATS Client (host.nc), not {nc!r}")
        self._nc = nc
        self._js = nc.jetstream()
        self._embeddings = embeddings
        self._settings = settings
        self._mirror = SearchMirror()
        self._kv: KeyValue | None = None
        self._follower: KvFollower | None = None

    async def start(self) -> None:
        """Binds (or creates) the bucket and loads the mirror; returns once it is current.

        Raises:
            Unavailable: NATS does not answer, or the replay takes too long.
        """
        with _backend("start"):
            self._kv = await open_key_value(self._js, _BUCKET_CONFIG)
            self._follower = KvFollower(self._nc, BUCKET, self._on_entry)
            await self._follower.start(_START_TIMEOUT_S)
        await self._purge_orphans()

    async def stop(self) -> None:
        """Stops following the bucket; the mirror keeps its last state."""
        if self._follower is not None:
            await self._follower.stop()

    # Collections.

    async def create(self, name: str, embedding_model: str = "") -> CollectionInfo:
        """Creates an empty collection.

        Args:
            name: Letters, digits, "_" and "-", up to 64.
            embedding_model: An embedding model; "" for the default.

        An idempotent call run again (its first run created the collection but could not
        record its outcome) gets the collection its first run created.

        Raises:
            InvalidArgument: A bad name.
            NotFound: No such embedding model.
            AlreadyExists: A collection of that name exists.
            ResourceExhausted: `max_collections` exist already.
        """
        check_name(name, "name")
        model = self._embeddings.resolve(embedding_model)
        await self._sync()
        if (existing := self._mirror.get(name)) is not None:
            if ran_before((existing.definition.call,)):
                return existing.info()
            raise AlreadyExists(f"collection {name!r} exists")
        if len(self._mirror) >= self._settings.max_collections:
            limit = self._settings.max_collections
            raise ResourceExhausted.too_large("collections", len(self._mirror) + 1, limit)
        dims = await self._embeddings.measure_dimensions(model)
        definition = Definition(
            name, model, dims, time.time(), new_generation(), call=idempotent_call()
        )
        with _backend("create a collection"):
            try:
                revision = await self._bucket().create(
                    collection_key(name), encode_definition(definition)
                )
            except KeyWrongLastSequenceError as err:
                raise AlreadyExists(f"collection {name!r} exists") from err
        await self._settled(revision)
        return definition.info(0)

    async def get(self, name: str) -> CollectionInfo:
        """A collection, with its document count.

        Raises:
            InvalidArgument: A bad name.
            NotFound: No such collection.
        """
        check_name(name, "name")
        await self._sync()
        return self._collection(name).info()

    async def list(self) -> builtins.list[CollectionInfo]:
        """Every collection, by name."""
        await self._sync()
        return [c.info() for name in self._mirror.names() if (c := self._mirror.get(name))]

    async def delete(self, name: str) -> None:
        """Deletes a collection and its documents.

        Raises:
            InvalidArgument: A bad name.
            NotFound: No such collection.
        """
        check_name(name, "name")
        await self._sync()
        collection = self._collection(name)
        generation = collection.definition.generation
        with _backend("delete a collection"):
            try:
                revision = await self._purge(collection_key(name), last=collection.revision)
            except KeyWrongLastSequenceError:  # deleted (and maybe created again) meanwhile
                raise NotFound(f"collection {name!r} does not exist") from None
            await self._js.purge_stream(STREAM, subject=documents_subject(name, generation))
        await self._settled(revision)
        await self._purge_orphans()

    # Documents.

    async def upsert(self, name: str, documents: Sequence[Document]) -> int:
        """Embeds documents with the collection's model and stores them, replacing those with
        the same ids. Not atomic: when it fails, some documents may be stored; retrying is safe.

        Args:
            name: The collection.
            documents: 1 to `max_upsert_documents` documents of distinct ids.

        Returns:
            The number of documents stored.

        Raises:
            InvalidArgument: A bad name or document (`documents[i].<field>`), repeated ids.
            ResourceExhausted: Too many documents, a text or metadata too large, or a collection
                that would hold more than `max_collection_documents`.
            NotFound: No such collection (or it was deleted while embedding).
            Aborted: The collection was deleted and created again while embedding.
        """
        check_name(name, "collection")
        checked = self._checked_documents(documents)
        await self._sync()
        collection = self._collection(name)
        self._check_room(collection, checked)
        definition = collection.definition
        heads = self._record_heads(checked, definition.dimensions)
        vectors = await self._embed(definition, [d.text for d in checked])
        self._same_generation(name, definition.generation)  # not deleted while embedding
        entries = [
            (document_key(name, definition.generation, d.id), encode_document(head, vector))
            for d, head, vector in zip(checked, heads, vectors, strict=True)
        ]
        with _backend("store documents"):
            revisions = await _bounded(lambda e: self._bucket().put(*e), entries)
        await self._settled(max(revisions))
        return len(entries)

    async def delete_documents(self, name: str, ids: Sequence[str]) -> int:
        """Deletes documents by id; ids not in the collection are skipped.

        Args:
            name: The collection.
            ids: 1 to `max_upsert_documents` ids.

        Returns:
            The number of documents that existed and were deleted.

        Raises:
            InvalidArgument: A bad name or id.
            ResourceExhausted: Too many ids.
            NotFound: No such collection.
        """
        check_name(name, "collection")
        wanted = self._checked_ids(ids)
        await self._sync()
        collection = self._collection(name)
        present = [doc_id for doc_id in wanted if doc_id in collection.index]
        if not present:
            return 0
        generation = collection.definition.generation
        keys = [document_key(name, generation, doc_id) for doc_id in present]
        with _backend("delete documents"):
            revisions = await _bounded(self._purge, keys)
        await self._settled(max(revisions))
        return len(present)

    async def search(
        self,
        name: str,
        query: str,
        *,
        top_k: int = DEFAULT_TOP_K,
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> builtins.list[Hit]:
        """The documents most similar to `query`, best first.

        Args:
            name: The collection.
            query: The text to search for.
            top_k: Most hits, 1 to `max_top_k`.
            filter: Metadata conditions, all of which must hold (see `nexus.llm.search`).
            min_score: Leave out hits of a lower cosine similarity.

        Raises:
            InvalidArgument: A bad name, query, top_k, min_score or filter (`filter.<key>`).
            ResourceExhausted: A query or filter too large.
            NotFound: No such collection.
            Aborted: The collection was deleted and created again during the search.
        """
        check_name(name, "collection")
        check_text("query", query, self._settings)
        if not 1 <= top_k <= self._settings.max_top_k:
            raise InvalidArgument.for_field(
                "top_k", f"must be between 1 and {self._settings.max_top_k}"
            )
        if min_score is not None and not math.isfinite(min_score):
            raise InvalidArgument.for_field("min_score", "must be a finite number")
        predicate = compile_filter(filter, self._settings.max_metadata_bytes)
        await self._sync()
        collection = self._collection(name)
        vector = (await self._embed(collection.definition, [query]))[0]
        index = self._same_generation(name, collection.definition.generation).index
        with index.snapshot() as snapshot:
            if snapshot.vectors.size <= _INLINE_SCORES:
                return rank(snapshot, vector, top_k, predicate, min_score)
            return await asyncio.to_thread(rank, snapshot, vector, top_k, predicate, min_score)

    # Checks.

    def _checked_documents(self, documents: Sequence[Document]) -> builtins.list[Document]:
        """Documents with valid ids, texts and metadata (a private copy of each metadata)."""
        limit = self._settings.max_upsert_documents
        if isinstance(documents, Document):
            raise InvalidArgument.for_field("documents", "must be a list of documents")
        items = list(documents)
        if not items:
            raise InvalidArgument.for_field("documents", "at least one document is required")
        if len(items) > limit:
            raise ResourceExhausted.too_large("documents", len(items), limit)
        seen: dict[str, int] = {}
        checked = []
        for i, document in enumerate(items):
            doc_id = check_id(document.id, f"documents[{i}].id")
            if doc_id in seen:
                raise InvalidArgument.for_field(
                    f"documents[{i}].id", f"repeats documents[{seen[doc_id]}].id"
                )
            seen[doc_id] = i
            text = check_text(f"documents[{i}].text", document.text, self._settings)
            checked.append(Document(doc_id, text, self._checked_metadata(i, document.metadata)))
        return checked

    def _checked_metadata(self, i: int, metadata: object) -> dict[str, Any]:
        field_path = f"documents[{i}].metadata"
        try:
            rendered = metadata_json({} if metadata is None else metadata)
        except (TypeError, ValueError) as err:
            raise InvalidArgument.for_field(
                field_path, f"must be a JSON object with finite numbers: {err}"
            ) from err
        size, limit = len(rendered.encode()), self._settings.max_metadata_bytes
        if size > limit:
            raise ResourceExhausted.too_large(f"{field_path} (bytes)", size, limit)
        copy: dict[str, Any] = json.loads(rendered)
        return copy

    def _checked_ids(self, ids: Sequence[str]) -> builtins.list[str]:
        """1 to `max_upsert_documents` valid ids, without repeats."""
        if isinstance(ids, str):
            raise InvalidArgument.for_field("ids", "must be a list of ids, not one id")
        items = list(ids)
        if not items:
            raise InvalidArgument.for_field("ids", "at least one id is required")
        limit = self._settings.max_upsert_documents
        if len(items) > limit:
            raise ResourceExhausted.too_large("ids", len(items), limit)
        return list(dict.fromkeys(check_id(d, f"ids[{i}]") for i, d in enumerate(items)))

    def _check_room(self, collection: Collection, documents: builtins.list[Document]) -> None:
        """Refuses documents that would take the collection past `max_collection_documents`."""
        added = sum(1 for d in documents if d.id not in collection.index)
        total, limit = len(collection.index) + added, self._settings.max_collection_documents
        if total > limit:
            name = collection.definition.name
            raise ResourceExhausted.too_large(f"collection {name!r} (documents)", total, limit)

    def _record_heads(
        self, documents: builtins.list[Document], dimensions: int
    ) -> builtins.list[bytes]:
        """The documents' records up to their vectors, after checking that each record will
        fit in one NATS message."""
        limit = self._nc.max_payload
        heads = [record_head(document) for document in documents]
        for i, head in enumerate(heads):
            size = record_size(head, dimensions)
            if size > limit:
                raise ResourceExhausted.too_large(f"documents[{i}] (stored bytes)", size, limit)
        return heads

    # Internals.

    async def _embed(self, definition: Definition, texts: builtins.list[str]) -> np.ndarray:
        """Unit vectors of `texts` with the collection's model, in chunks the model accepts."""
        step = self._settings.max_embed_inputs
        parts = [
            (await self._embeddings.embed(definition.embedding_model, texts[i : i + step])).vectors
            for i in range(0, len(texts), step)
        ]
        vectors = unit_rows(np.concatenate(parts))
        if vectors.shape[1] != definition.dimensions:
            raise FailedPrecondition(
                f"embedding model {definition.embedding_model!r} now returns "
                f"{vectors.shape[1]}-d vectors; collection {definition.name!r} holds "
                f"{definition.dimensions}-d ones",
                "DIMENSIONS_CHANGED",
            )
        return vectors

    def _same_generation(self, name: str, generation: str) -> Collection:
        """The collection, if it is still the one of `generation` (after an await).

        Raises:
            NotFound: It was deleted meanwhile.
            Aborted: It was deleted and created again meanwhile.
        """
        collection = self._collection(name)
        if collection.definition.generation != generation:
            raise Aborted(f"collection {name!r} was deleted and created again meanwhile; retry")
        return collection

    def _collection(self, name: str) -> Collection:
        collection = self._mirror.get(name)
        if collection is None:
            raise NotFound(f"collection {name!r} does not exist")
        return collection

    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise FailedPrecondition("the collection store is not started")
        return self._kv

    async def _purge(self, key: str, last: int | None = None) -> int:
        """Purges `key` (a KV purge marker, published to learn its sequence), if `last` is given
        only while that is still the key's latest revision."""
        headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        if last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
        try:
            ack = await self._js.publish(f"{PREFIX}{key}", b"", headers=headers)
        except APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                raise KeyWrongLastSequenceError(description=err.description) from err
            raise
        return ack.seq

    async def _purge_orphans(self) -> None:
        """Purges the documents of deleted collections that the mirror came across (best
        effort: what fails now is found again at the next start)."""
        while self._mirror.orphans:
            name, generation = self._mirror.orphans.pop()
            try:
                await self._js.purge_stream(STREAM, subject=documents_subject(name, generation))
            except (NatsError, TimeoutError) as err:
                log.warning("could not purge the documents of deleted %s: %r", name, err)
                return

    async def _on_entry(self, entry: KvEntry) -> None:
        """Applies one KV entry of the stream to the mirror."""
        await self._mirror.prepare(entry.key, removed=entry.removed)
        self._mirror.apply(entry.key, entry.value, removed=entry.removed, revision=entry.revision)

    async def _sync(self) -> None:
        """Waits until the mirror holds everything the bucket held when called (read your own
        and other replicas' writes).

        Raises:
            Unavailable: NATS does not answer, or the mirror lags too far behind.
        """
        with _backend("read the collections"):
            synced = await self._following().sync(_SYNC_TIMEOUT_S)
        if not synced:
            raise Unavailable("the search index of this replica is catching up; retry")

    async def _settled(self, revision: int) -> None:
        """Waits until the mirror applied `revision`; past `_SYNC_TIMEOUT_S` it logs (the write
        it follows is stored all the same)."""
        if not await self._following().settled(revision, _SYNC_TIMEOUT_S):
            log.warning("the search mirror lags behind revision %d", revision)

    def _following(self) -> KvFollower:
        if self._follower is None:
            raise FailedPrecondition("the collection store is not started")
        return self._follower


_BUCKET_CONFIG = api.KeyValueConfig(
    bucket=BUCKET,
    description="Nexus llm: search collections and their documents",
    history=1,
    storage=api.StorageType.FILE,
)


async def _bounded(call: Callable[[T], Awaitable[int]], items: Sequence[T]) -> list[int]:
    """`call` on each item, `_WRITE_CONCURRENCY` at a time; the results, in order."""
    results: list[int] = []
    for start in range(0, len(items), _WRITE_CONCURRENCY):
        chunk = items[start : start + _WRITE_CONCURRENCY]
        results.extend(await asyncio.gather(*(call(item) for item in chunk)))
    return results


@contextlib.contextmanager
def _backend(what: str) -> Iterator[None]:
    """Turns NATS failures into Unavailable: the client may retry."""
    try:
        yield
    except (NatsError, TimeoutError) as err:
        raise Unavailable(f"the collection store cannot {what} now: {err!r}") from err
