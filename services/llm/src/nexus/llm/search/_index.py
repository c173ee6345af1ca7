"""One collection's documents in memory: a float32 matrix of unit vectors, a row per document.

A search scores every row with one matrix-vector product (exact cosine similarity; a collection
holds at most `max_collection_documents`, so no approximate index is needed). Large collections
are scored in a thread while the event loop goes on applying changes, so the rows a search reads
are copy-on-write: a search pins the current rows, and a change made while rows are pinned goes
to a copy. A search therefore always sees one consistent state, and nothing is copied unless a
change and a threaded search actually overlap. `prepare` makes such copies, and the doubling of
full rows, in a thread too, so that a large collection never holds up the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from nexus.llm.search._filters import Predicate
from nexus.llm.search._types import Document, Hit

_INITIAL_ROWS = 16


class _Rows:
    """Vectors (with spare capacity) and the documents of their first rows, in step."""

    __slots__ = ("docs", "pins", "vectors")

    def __init__(self, vectors: np.ndarray, docs: list[Document]) -> None:
        self.vectors = vectors
        self.docs = docs
        self.pins = 0  # searches reading these rows right now

    def copy(self, capacity: int) -> _Rows:
        """A copy with room for `capacity` rows (at least those in use)."""
        count = len(self.docs)
        vectors = np.zeros((max(capacity, count, 1), self.vectors.shape[1]), np.float32)
        vectors[:count] = self.vectors[:count]
        return _Rows(vectors, list(self.docs))

    @property
    def full(self) -> bool:
        """Whether every row is in use."""
        return len(self.docs) == int(self.vectors.shape[0])


@dataclass(frozen=True)
class Snapshot:
    """What a search reads: `vectors[i]` is the unit vector of `docs[i]`. Immutable while held."""

    vectors: np.ndarray
    docs: Sequence[Document]

    def __len__(self) -> int:
        return len(self.docs)


class VectorIndex:
    """The documents of one collection and their unit vectors.

    Args:
        dimensions: The vectors' length.
    """

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self._rows = _Rows(np.zeros((_INITIAL_ROWS, dimensions), np.float32), [])
        self._slots: dict[str, int] = {}  # document id -> row

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._slots

    def put(self, document: Document, vector: np.ndarray) -> None:
        """Adds `document`, or replaces the one with its id.

        Raises:
            ValueError: A vector of another length.
        """
        if vector.shape != (self.dimensions,):
            raise ValueError(f"a vector of shape {vector.shape} in a {self.dimensions}-d index")
        rows = self._writable()
        slot = self._slots.get(document.id)
        if slot is None:
            slot = len(rows.docs)
            if rows.full:
                rows = self._rows = rows.copy(2 * slot)
            rows.docs.append(document)
            self._slots[document.id] = slot
        else:
            rows.docs[slot] = document
        rows.vectors[slot] = vector

    def remove(self, doc_id: str) -> bool:
        """Removes a document (its row is filled with the last one). Returns whether it was
        there."""
        slot = self._slots.pop(doc_id, None)
        if slot is None:
            return False
        rows = self._writable()
        last = len(rows.docs) - 1
        if slot != last:
            moved = rows.docs[last]
            rows.docs[slot] = moved
            rows.vectors[slot] = rows.vectors[last]
            self._slots[moved.id] = slot
        rows.docs.pop()
        return True

    async def prepare(self, doc_id: str, *, removing: bool) -> None:
        """Readies the rows for a change of `doc_id`: when searches read them, or an addition
        finds them full, copies them (with twice the room if full) in a thread. The caller
        applies the change right after, without awaiting in between."""
        rows = self._rows
        full = not removing and doc_id not in self._slots and rows.full
        if rows.pins or full:
            capacity = rows.vectors.shape[0] * (2 if full else 1)
            self._rows = await asyncio.to_thread(rows.copy, capacity)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """The current documents and vectors, unchanged until the block ends."""
        rows = self._rows
        rows.pins += 1
        try:
            yield Snapshot(rows.vectors[: len(rows.docs)], rows.docs)
        finally:
            rows.pins -= 1

    def _writable(self) -> _Rows:
        """The rows to change: a copy when a search reads the current ones."""
        if self._rows.pins:  # not prepared: copy here
            self._rows = self._rows.copy(self._rows.vectors.shape[0])
        return self._rows


def rank(
    snapshot: Snapshot,
    query: np.ndarray,
    top_k: int,
    predicate: Predicate | None = None,
    min_score: float | None = None,
) -> list[Hit]:
    """The `top_k` documents most similar to the unit vector `query`, best first.

    Args:
        snapshot: The documents and their unit vectors.
        query: A unit vector.
        top_k: Most hits.
        predicate: Only documents whose metadata satisfy it.
        min_score: Only documents at least this similar.
    """
    if not len(snapshot):
        return []
    scores = np.clip(snapshot.vectors @ query, -1.0, 1.0)
    order = _best_first(scores, top_k if predicate is None else len(scores))
    if min_score is not None:
        order = order[: int(np.count_nonzero(scores[order] >= min_score))]
    if predicate is None:
        return [Hit(snapshot.docs[row], float(scores[row])) for row in order.tolist()]
    hits: list[Hit] = []
    docs = snapshot.docs
    for row in order.tolist():
        document = docs[row]
        if predicate(document.metadata):
            hits.append(Hit(document, float(scores[row])))
            if len(hits) == top_k:
                break
    return hits


def _best_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the `k` highest scores, highest first."""
    if k < len(scores):
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top], kind="stable")]
    return np.argsort(-scores, kind="stable")
