"""Semantic search: named collections of embedded documents, shared by every replica.

Design (for an ADR):

- Storage. One JetStream KV bucket, `nexus_llm_search` (history 1, file storage), holds the
  collection definitions (`c.<collection>`) and the documents
  (`d.<collection>.<generation>.<base64url id>`: JSON of id, text, metadata and the unit
  vector as base64 float32). KV gives per-key latest values, compaction of replaced documents,
  compare-and-set for creation and deletion, and survives restarts of the service and of
  nats-server (file storage). Vectors are stored rather than recomputed, so a replica loads a
  collection without calling the embedding model, and provider models are paid once.
- One bucket, not two. Definitions and documents share one stream, so a replica sees them in
  one order: a collection's definition (immutable once written) always precedes its
  documents. The generation, a random token drawn at creation, keeps the documents of a deleted
  collection out of a new one of the same name, even when a write races the deletion; deleting a
  collection purges its definition (compare-and-set on its revision), then its generation's
  subjects with one stream purge rather than a marker per document.
- Serving. Every replica follows the bucket's stream with the `Follower` of
  `nexus.common.events` (the machinery the model registry's mirror uses: the latest entry of
  each key first, then changes live, resuming after NATS restarts without gaps or repeats) into
  an in-memory mirror: per collection, a float32 matrix of unit vectors and the documents
  (`VectorIndex`). A search is one exact matrix-vector product (cosine similarity), then the
  metadata filter over candidates in score order until `top_k` match; collections are bounded
  by `max_collection_documents`, so no approximate index is needed.
- Consistency. Every write waits until the local mirror applied it. Every read first asks the
  stream for the sequence of its last message (one round trip; purged messages do not count)
  and waits, at most 5 s, until the mirror applied it: a document written through any replica is
  found by the next search on any other (read-your-writes across replicas). A mirror that cannot
  catch up in time answers UNAVAILABLE rather than stale results.
- Limits. Collection count (`max_collections`), documents per collection, documents per upsert,
  text length, metadata bytes, top_k and filter size are settings; a stored record must fit in
  one NATS message (the server's max_payload, 1 MiB by default). With concurrent writers on
  several replicas the per-collection document limit is approximate (each checks its mirror).
- Memory. Each replica holds every collection's vectors, texts and metadata in memory.

Filters: `{"lang": "en"}` is equality, `{"year": {"$gte": 2020}}` applies operators ($eq, $ne,
$gt, $gte, $lt, $lte, $in, $nin), and several keys must all hold; see `_filters`.
"""

from nexus.llm.search._filters import OPERATORS, compile_filter
from nexus.llm.search._records import BUCKET, MAX_ID_CHARS
from nexus.llm.search._store import DEFAULT_TOP_K, CollectionStore
from nexus.llm.search._types import CollectionInfo, Document, Hit

__all__ = [
    "BUCKET",
    "DEFAULT_TOP_K",
    "MAX_ID_CHARS",
    "OPERATORS",
    "CollectionInfo",
    "CollectionStore",
    "Document",
    "Hit",
    "compile_filter",
]
