"""CollectionStore on a real nats-server with the real local embedding model: collections,
upserts, ranking, filters, limits, persistence across restarts and a second replica."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from nexus.common.errors import (
    REQUEST_TOO_LARGE,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from nexus.common.nats import connect
from nexus.common.natsserver import NatsServer
from nexus.common.settings import NexusSettings
from nexus.llm.embeddings import LOCAL_MODEL, EmbeddingModels, LocalModel
from nexus.llm.search import BUCKET, CollectionStore, Document, Hit, _store
from nexus.llm.search._index import VectorIndex, rank
from nexus.llm.settings import LlmSettings

OpenStore = Callable[..., Coroutine[Any, Any, CollectionStore]]
"""Opens a store ("a replica") on its own NATS connection: open(common=None, **overrides)."""

CORPUS = [
    Document("cat", "a cat sat on the mat", {"kind": "animal", "year": 2020, "legs": 4}),
    Document("dog", "the dog barked at the postman", {"kind": "animal", "year": 2021}),
    Document(
        "revenue",
        "quarterly revenue rose by ten percent",
        {"kind": "finance", "year": 2022, "public": True},
    ),
    Document("rain", "heavy rain is expected tomorrow", {"kind": "weather", "year": 2023}),
    Document(
        "stocks",
        "the stock market fell sharply",
        {"kind": "finance", "year": 2024, "public": False},
    ),
]
EVERY_ID = {d.id for d in CORPUS}


@pytest.fixture
async def models(
    local_model: LocalModel, executor: ThreadPoolExecutor
) -> AsyncIterator[EmbeddingModels]:
    """Started embedding models (the local one only)."""
    models = EmbeddingModels(LlmSettings(device="cpu"), executor)
    await models.start()
    yield models
    await models.stop()


@pytest.fixture
async def open_store(
    models: EmbeddingModels, nexus_settings: NexusSettings
) -> AsyncIterator[OpenStore]:
    """Opens stores, each on a NATS connection of its own; all are closed at the end."""
    opened: list[tuple[CollectionStore, Client]] = []

    async def open_one(common: NexusSettings | None = None, **overrides: Any) -> CollectionStore:
        nc = await connect(common or nexus_settings, "test-search")
        store = CollectionStore(nc, models, LlmSettings(device="cpu", **overrides))
        await store.start()
        opened.append((store, nc))
        return store

    yield open_one
    for store, nc in opened:
        await store.stop()
        await nc.close()


@pytest.fixture
async def store(open_store: OpenStore) -> CollectionStore:
    """A store with the default limits."""
    return await open_store()


@pytest.fixture
async def corpus(store: CollectionStore) -> str:
    """A new collection holding CORPUS; its name."""
    name = unique()
    await store.create(name)
    assert await store.upsert(name, CORPUS) == len(CORPUS)
    return name


def unique(prefix: str = "docs") -> str:
    """A collection name no other test uses (the session's NATS is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ids(hits: list[Hit]) -> list[str]:
    return [hit.document.id for hit in hits]


async def test_create_get_list_and_delete(store: CollectionStore) -> None:
    name = unique()

    info = await store.create(name)

    assert (info.name, info.embedding_model, info.dimensions, info.document_count) == (
        name,
        LOCAL_MODEL,
        384,
        0,
    )
    assert abs(info.create_time - time.time()) < 60
    assert await store.get(name) == info
    assert info in await store.list()
    with pytest.raises(AlreadyExists):
        await store.create(name, LOCAL_MODEL)

    await store.delete(name)

    with pytest.raises(NotFound):
        await store.get(name)
    with pytest.raises(NotFound):
        await store.delete(name)
    assert name not in {c.name for c in await store.list()}


@pytest.mark.parametrize("name", ["", "-leading", "_leading", "has space", "dot.ted", "x" * 65])
async def test_bad_collection_names_are_invalid(store: CollectionStore, name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.create(name)
    assert caught.value.violations[0].field == "name"
    with pytest.raises(InvalidArgument):
        await store.search(name, "query")


async def test_an_unknown_embedding_model_is_not_found(store: CollectionStore) -> None:
    with pytest.raises(NotFound, match=LOCAL_MODEL):
        await store.create(unique(), "no-such-model")


async def test_a_search_ranks_documents_by_meaning(store: CollectionStore, corpus: str) -> None:
    hits = await store.search(corpus, "a kitten lies on the rug", top_k=3)

    assert len(hits) == 3
    assert hits[0].document == CORPUS[0]
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    finance = await store.search(corpus, "shares and company earnings", top_k=2)
    assert set(ids(finance)) == {"revenue", "stocks"}
    assert (await store.get(corpus)).document_count == len(CORPUS)
    assert len(await store.search(corpus, "anything", top_k=100)) == len(CORPUS)


FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({"kind": "finance"}, {"revenue", "stocks"}),
    ({"year": 2020.0}, {"cat"}),  # protobuf's Struct sends every number as a double
    ({"public": True}, {"revenue"}),
    ({"kind": {"$eq": "weather"}}, {"rain"}),
    ({"kind": {"$ne": "animal"}}, {"revenue", "rain", "stocks"}),
    ({"public": {"$ne": True}}, EVERY_ID - {"revenue"}),  # no key: not equal
    ({"year": {"$gt": 2022}}, {"rain", "stocks"}),
    ({"year": {"$gte": 2022}}, {"revenue", "rain", "stocks"}),
    ({"year": {"$lt": 2021}}, {"cat"}),
    ({"year": {"$lte": 2021}}, {"cat", "dog"}),
    ({"year": {"$gte": 2021, "$lt": 2023}}, {"dog", "revenue"}),
    ({"kind": {"$in": ["weather", "finance"]}}, {"revenue", "rain", "stocks"}),
    ({"kind": {"$nin": ["weather", "finance"]}}, {"cat", "dog"}),
    ({"kind": "finance", "year": {"$gte": 2023}}, {"stocks"}),  # several keys: all hold
    ({"legs": {"$gt": 2}}, {"cat"}),
    ({"year": {"$gt": "2000"}}, set()),  # a string is not compared with numbers
    ({"public": 1}, set()),  # true is not 1
    ({}, EVERY_ID),
]


async def test_metadata_filters(store: CollectionStore, corpus: str) -> None:
    for conditions, expected in FILTERS:
        hits = await store.search(corpus, "news", top_k=10, filter=conditions)

        assert set(ids(hits)) == expected, conditions


async def test_a_filter_keeps_the_best_matching_documents(
    store: CollectionStore, corpus: str
) -> None:
    hits = await store.search(corpus, "a kitten", top_k=1, filter={"kind": "animal"})
    assert ids(hits) == ["cat"]


@pytest.mark.parametrize(
    ("conditions", "field"),
    [
        ({"year": {"$between": [1, 2]}}, "filter.year"),
        ({"year": {"$gt": [2020]}}, "filter.year"),
        ({"year": {"$lte": True}}, "filter.year"),
        ({"kind": {"$in": "finance"}}, "filter.kind"),
        ({"kind": {"$nin": 3}}, "filter.kind"),
        ({"kind": {}}, "filter.kind"),
        ({"kind": {"eq": "finance"}}, "filter.kind"),
        ({"$or": [{"kind": "finance"}]}, "filter.$or"),
        ({"year": math.nan}, "filter"),
        ("kind", "filter"),
    ],
)
async def test_malformed_filters_are_invalid(
    store: CollectionStore, corpus: str, conditions: Any, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await store.search(corpus, "news", filter=conditions)

    assert caught.value.violations[0].field == field


async def test_min_score_leaves_out_weaker_hits(store: CollectionStore, corpus: str) -> None:
    everything = await store.search(corpus, "a kitten lies on the rug", top_k=10)
    between = (everything[0].score + everything[1].score) / 2

    hits = await store.search(corpus, "a kitten lies on the rug", top_k=10, min_score=between)

    assert ids(hits) == ["cat"]
    assert await store.search(corpus, "a kitten", min_score=1.01) == []
    filtered = await store.search(
        corpus, "a kitten", min_score=-1.0, filter={"kind": "finance"}, top_k=10
    )
    assert set(ids(filtered)) == {"revenue", "stocks"}


async def test_an_upsert_replaces_the_document_of_the_same_id(
    store: CollectionStore, corpus: str
) -> None:
    replacement = Document("cat", "the annual budget was approved", {"kind": "finance"})

    assert await store.upsert(corpus, [replacement]) == 1

    assert (await store.get(corpus)).document_count == len(CORPUS)
    finance = await store.search(corpus, "budget", top_k=10, filter={"kind": "finance"})
    assert finance[0].document == replacement
    kitten = await store.search(corpus, "a kitten lies on the rug", top_k=10)
    assert replacement in [hit.document for hit in kitten]
    assert CORPUS[0] not in [hit.document for hit in kitten]


async def test_deleting_documents_counts_those_that_existed(
    store: CollectionStore, corpus: str
) -> None:
    assert await store.delete_documents(corpus, ["cat", "no-such-doc", "cat"]) == 1

    assert (await store.get(corpus)).document_count == len(CORPUS) - 1
    hits = await store.search(corpus, "a kitten lies on the rug", top_k=10)
    assert set(ids(hits)) == EVERY_ID - {"cat"}
    assert await store.delete_documents(corpus, ["cat"]) == 0
    assert await store.upsert(corpus, [CORPUS[0]]) == 1
    assert ids(await store.search(corpus, "a kitten lies on the rug", top_k=1)) == ["cat"]


async def test_a_collection_created_again_starts_empty(store: CollectionStore, corpus: str) -> None:
    await store.delete(corpus)
    await store.create(corpus)

    assert (await store.get(corpus)).document_count == 0
    assert await store.search(corpus, "a kitten") == []


async def test_unknown_collections_are_not_found(store: CollectionStore) -> None:
    name = unique()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get(name),
        lambda: store.upsert(name, CORPUS[:1]),
        lambda: store.delete_documents(name, ["cat"]),
        lambda: store.search(name, "a kitten"),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            await call()


async def test_document_checks_and_limits(open_store: OpenStore) -> None:
    store = await open_store(
        max_upsert_documents=2,
        max_collection_documents=3,
        max_metadata_bytes=64,
        max_input_chars=50,
    )
    name = unique()
    await store.create(name)

    async def refused(documents: list[Document]) -> InvalidArgument | ResourceExhausted:
        with pytest.raises((InvalidArgument, ResourceExhausted)) as caught:
            await store.upsert(name, documents)
        assert isinstance(caught.value, InvalidArgument | ResourceExhausted)
        return caught.value

    def doc(doc_id: str = "a", text: str = "text", **metadata: Any) -> Document:
        return Document(doc_id, text, metadata)

    assert (await refused([])).violations[0].field == "documents"
    assert (await refused([doc("a"), doc("b"), doc("c")])).reason == REQUEST_TOO_LARGE
    assert (await refused([doc("a"), doc("a")])).violations[0].field == "documents[1].id"
    assert (await refused([doc("")])).violations[0].field == "documents[0].id"
    assert (await refused([doc("x" * 257)])).violations[0].field == "documents[0].id"
    assert (await refused([doc(text="")])).violations[0].field == "documents[0].text"
    assert "documents[1].text" in str(await refused([doc("a"), doc("b", "x" * 51)]))
    assert "documents[0].metadata" in str(await refused([doc(note="x" * 64)]))
    bad_json = await refused([doc(score=math.inf)])
    assert bad_json.violations[0].field == "documents[0].metadata"
    # Room for 3 documents: replacing ones already there does not count twice.
    assert await store.upsert(name, [doc("a"), doc("b", "x" * 50)]) == 2
    assert await store.upsert(name, [doc("a"), doc("c")]) == 2
    assert "(documents)" in str(await refused([doc("d")]))
    assert (await store.get(name)).document_count == 3


async def test_id_and_search_checks(open_store: OpenStore) -> None:
    store = await open_store(max_upsert_documents=2, max_top_k=10, max_input_chars=50)
    name = unique()
    await store.create(name)

    with pytest.raises(InvalidArgument):
        await store.delete_documents(name, [])
    with pytest.raises(InvalidArgument) as caught:
        await store.delete_documents(name, ["ok", ""])
    assert caught.value.violations[0].field == "ids[1]"
    with pytest.raises(ResourceExhausted):
        await store.delete_documents(name, ["a", "b", "c"])
    for top_k in (0, 11):
        with pytest.raises(InvalidArgument) as caught:
            await store.search(name, "query", top_k=top_k)
        assert caught.value.violations[0].field == "top_k"
    with pytest.raises(InvalidArgument) as caught:
        await store.search(name, "")
    assert caught.value.violations[0].field == "query"
    with pytest.raises(ResourceExhausted):
        await store.search(name, "x" * 51)
    with pytest.raises(InvalidArgument) as caught:
        await store.search(name, "query", min_score=math.nan)
    assert caught.value.violations[0].field == "min_score"


async def test_a_filter_too_large_is_refused(open_store: OpenStore) -> None:
    store = await open_store(max_metadata_bytes=64)
    name = unique()
    await store.create(name)

    with pytest.raises(ResourceExhausted) as caught:
        await store.search(name, "query", filter={"kind": {"$in": ["x" * 10] * 10}})

    assert caught.value.reason == REQUEST_TOO_LARGE


async def test_a_document_too_large_for_a_nats_message_is_refused(open_store: OpenStore) -> None:
    store = await open_store(max_input_chars=2_000_000)
    name = unique()
    await store.create(name)

    with pytest.raises(ResourceExhausted, match=r"documents\[0\]") as caught:
        await store.upsert(name, [Document("big", "word " * 240_000, {})])

    assert caught.value.reason == REQUEST_TOO_LARGE
    assert (await store.get(name)).document_count == 0


async def test_the_number_of_collections_is_limited(
    nats_server: NatsServer, open_store: OpenStore
) -> None:
    store = await open_store(NexusSettings(nats_url=nats_server.url), max_collections=2)
    await store.create("first")
    await store.create("second")

    with pytest.raises(ResourceExhausted) as caught:
        await store.create("third")

    assert caught.value.reason == REQUEST_TOO_LARGE
    await store.delete("first")
    await store.create("third")


async def test_collections_survive_a_restart_of_the_service(open_store: OpenStore) -> None:
    first = await open_store()
    name = unique()
    await first.create(name)
    await first.upsert(name, CORPUS)
    await first.delete_documents(name, ["dog"])
    await first.stop()

    restarted = await open_store()

    assert (await restarted.get(name)).document_count == len(CORPUS) - 1
    hits = await restarted.search(name, "a kitten lies on the rug", top_k=10)
    assert hits[0].document == CORPUS[0]
    assert set(ids(hits)) == EVERY_ID - {"dog"}


async def test_documents_of_a_deleted_collection_are_purged_at_start(
    open_store: OpenStore, nats_client: Client
) -> None:
    # What an upsert racing the deletion of its collection leaves: a document whose collection
    # generation has no definition any more.
    name = unique()
    kv = await nats_client.jetstream().key_value(BUCKET)
    await kv.put(
        f"d.{name}.0123456789abcdef.Y2F0", b'{"id":"cat","text":"t","metadata":{},"vector":""}'
    )
    subject = f"$KV.{BUCKET}.d.{name}.>"

    await open_store()

    with pytest.raises(NotFoundError):
        await nats_client.jetstream().get_last_msg(f"KV_{BUCKET}", subject)


async def test_a_second_replica_reads_the_first_ones_writes_at_once(
    open_store: OpenStore,
) -> None:
    one, two = await open_store(), await open_store()
    name = unique()

    await one.create(name)
    assert (await two.get(name)).document_count == 0
    await one.upsert(name, CORPUS)
    assert ids(await two.search(name, "a kitten lies on the rug", top_k=1)) == ["cat"]

    await two.upsert(name, [Document("cat", "the annual budget was approved", {})])
    assert (await one.search(name, "budget", top_k=1))[0].document.text.startswith("the annual")
    assert await two.delete_documents(name, ["rain"]) == 1
    assert "rain" not in ids(await one.search(name, "heavy rain tomorrow", top_k=10))

    await one.delete(name)
    with pytest.raises(NotFound):
        await two.get(name)
    await two.create(name)
    assert (await one.get(name)).document_count == 0
    assert await one.search(name, "a kitten") == []


async def test_replicas_go_on_after_a_restart_of_nats(
    nats_server: NatsServer, open_store: OpenStore
) -> None:
    common = NexusSettings(nats_url=nats_server.url)
    one, two = await open_store(common), await open_store(common)
    name = unique()
    await one.create(name)
    await one.upsert(name, CORPUS[:2])

    nats_server.restart()

    await retried(lambda: one.upsert(name, CORPUS[2:]))
    hits = await retried(lambda: two.search(name, "quarterly revenue", top_k=10))
    assert set(ids(hits)) == EVERY_ID
    assert ids(hits)[0] == "revenue"


async def retried(call: Callable[[], Awaitable[Any]], timeout_s: float = 30.0) -> Any:
    """`call()` again until NATS is back (it answers Unavailable while reconnecting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_search_reads_one_state_while_documents_change() -> None:
    index = VectorIndex(2)
    for i in range(40):  # past the initial room, so the rows grow
        index.put(Document(f"d{i}", "text"), np.array([1.0, i / 40], np.float32))
    query = np.array([1.0, 0.0], np.float32)

    with index.snapshot() as snapshot:
        before = rank(snapshot, query, 40)
        await index.prepare("d0", removing=True)
        index.remove("d0")
        await index.prepare("new", removing=False)
        index.put(Document("new", "text"), np.array([0.0, 1.0], np.float32))
        index.put(Document("d5", "changed"), np.array([0.0, -1.0], np.float32))

        assert rank(snapshot, query, 40) == before
        assert len(snapshot) == 40

    with index.snapshot() as now:
        after = {hit.document.id: hit for hit in rank(now, query, 50)}
    assert len(index) == 40
    assert "d0" not in after
    assert after["d5"].document.text == "changed"
    assert after["new"].score == pytest.approx(0.0, abs=1e-6)


async def test_large_collections_are_scored_in_a_thread_beside_writes(
    store: CollectionStore, corpus: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_store, "_INLINE_SCORES", 0)  # every collection counts as large
    more = [Document(f"extra-{i}", f"note number {i} about cats", {}) for i in range(20)]

    hits, stored = await asyncio.gather(
        store.search(corpus, "a kitten lies on the rug", top_k=3), store.upsert(corpus, more)
    )

    assert stored == len(more)
    assert hits[0].document.id in {"cat", *(d.id for d in more)}
    assert (await store.get(corpus)).document_count == len(CORPUS) + len(more)
    assert ids(await store.search(corpus, "quarterly revenue", top_k=1)) == ["revenue"]
