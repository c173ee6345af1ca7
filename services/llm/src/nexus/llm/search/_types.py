"""The values of semantic search: documents, hits and collections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """A text stored in a collection.

    Attributes:
        id: Its id within the collection (1 to 256 characters).
        text: The text that is embedded and returned.
        metadata: A JSON object to filter on. Documents that a store hands out share it with
            the store's mirror: read it, never change it.
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """A document found by a search, and its cosine similarity to the query (-1 to 1)."""

    document: Document
    score: float


@dataclass(frozen=True)
class CollectionInfo:
    """A collection of embedded documents.

    Attributes:
        name: Its name.
        embedding_model: The model of its documents and queries.
        dimensions: The vectors' length.
        document_count: Documents stored.
        create_time: Unix time of its creation.
    """

    name: str
    embedding_model: str
    dimensions: int
    document_count: int
    create_time: float
