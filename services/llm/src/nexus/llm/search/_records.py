"""How collections and documents are stored: KV keys and JSON records.

One KV bucket, `nexus_llm_search` (history 1), holds both:

- `c.<collection>`: the definition, JSON {name, embedding_model, dimensions, create_time,
  generation, call} (`call`: the idempotent call that created it, never shown);
- `d.<collection>.<generation>.<id>`: a document, JSON {id, text, metadata, vector}, the vector
  as base64 of little-endian float32, and the id in the key as unpadded base64url of its UTF-8
  (KV keys allow only `[-/_=.a-zA-Z0-9]`).

The generation is a random token drawn when a collection is created: the documents of a deleted
collection can never reappear in a new one of the same name.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nexus.common.errors import InvalidArgument
from nexus.common.names import is_name
from nexus.llm.search._types import CollectionInfo, Document

BUCKET = "nexus_llm_search"
"""The KV bucket of collections and documents."""
STREAM = f"KV_{BUCKET}"
"""The stream behind the bucket."""
PREFIX = f"$KV.{BUCKET}."
"""Subject prefix of the bucket's keys."""
MAX_ID_CHARS = 256
"""Longest document id."""

_COLLECTION = "c"
_DOCUMENT = "d"
_VECTOR_DTYPE = np.dtype("<f4")
_TAIL = b'"}'


@dataclass(frozen=True)
class Definition:
    """What a collection is, as stored (immutable once created).

    `call` is the idempotent call that created it ("" for none): that call run again answers
    with this collection rather than ALREADY_EXISTS.
    """

    name: str
    embedding_model: str
    dimensions: int
    create_time: float
    generation: str
    call: str = ""

    def info(self, document_count: int) -> CollectionInfo:
        """The collection's public description."""
        return CollectionInfo(
            self.name, self.embedding_model, self.dimensions, document_count, self.create_time
        )


@dataclass(frozen=True)
class Key:
    """A parsed key: a definition (`doc_id` "") or a document."""

    name: str
    generation: str = ""
    doc_id: str = ""

    @property
    def is_document(self) -> bool:
        """Whether it is a document's key."""
        return bool(self.generation)


def check_id(doc_id: object, field_path: str) -> str:
    """A valid document id: a string of 1 to `MAX_ID_CHARS` characters.

    Raises:
        InvalidArgument: An id that is not.
    """
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidArgument.for_field(field_path, "must be a non-empty string")
    if len(doc_id) > MAX_ID_CHARS:
        raise InvalidArgument.for_field(field_path, f"must be at most {MAX_ID_CHARS} characters")
    return doc_id


def new_generation() -> str:
    """A fresh generation token for a new collection."""
    return uuid.uuid4().hex


def collection_key(name: str) -> str:
    """The key of a collection's definition."""
    return f"{_COLLECTION}.{name}"


def document_key(name: str, generation: str, doc_id: str) -> str:
    """The key of a document of one generation of a collection."""
    return f"{_DOCUMENT}.{name}.{generation}.{encode_id(doc_id)}"


def documents_subject(name: str, generation: str) -> str:
    """The subject filter of every document of one generation of a collection."""
    return f"{PREFIX}{_DOCUMENT}.{name}.{generation}.>"


def encode_id(doc_id: str) -> str:
    """A document id as a KV key token: unpadded base64url of its UTF-8."""
    return base64.urlsafe_b64encode(doc_id.encode()).decode().rstrip("=")


def decode_id(token: str) -> str:
    """The document id of a key token (ValueError when it is not one)."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as err:
        raise ValueError(f"not a document id token: {token!r}") from err


def parse_key(key: str) -> Key | None:
    """The parsed key, or None for a key that is neither a definition nor a document."""
    parts = key.split(".")
    try:
        if parts[0] == _COLLECTION and len(parts) == 2 and is_name(parts[1]):
            return Key(parts[1])
        if parts[0] == _DOCUMENT and len(parts) == 4 and is_name(parts[1]):
            return Key(parts[1], parts[2], decode_id(parts[3]))
    except ValueError:
        return None
    return None


def encode_definition(definition: Definition) -> bytes:
    """A definition as its KV value."""
    return json.dumps(asdict(definition), separators=(",", ":")).encode()


def decode_definition(value: bytes) -> Definition:
    """A definition from its KV value (ValueError, KeyError or TypeError when malformed)."""
    record = json.loads(value)
    return Definition(
        name=str(record["name"]),
        embedding_model=str(record["embedding_model"]),
        dimensions=int(record["dimensions"]),
        create_time=float(record["create_time"]),
        generation=str(record["generation"]),
        call=str(record.get("call", "")),  # absent from definitions written before
    )


def metadata_json(metadata: object) -> str:
    """Canonical JSON of a document's metadata (ValueError or TypeError when not JSON)."""
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be an object")
    return json.dumps(metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def record_head(document: Document) -> bytes:
    """The KV value of a document up to its vector (JSON encoding is the costly part: done once
    per document, for the size check and the record)."""
    fields = {"id": document.id, "text": document.text, "metadata": document.metadata}
    rendered = json.dumps(fields, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return f'{rendered[:-1]},"vector":"'.encode()


def record_size(head: bytes, dimensions: int) -> int:
    """Bytes of the KV value of a document of `record_head` `head` with a vector."""
    return len(head) + 4 * math.ceil(dimensions * _VECTOR_DTYPE.itemsize / 3) + len(_TAIL)


def encode_document(document: Document | bytes, vector: np.ndarray) -> bytes:
    """A document (or its `record_head`) and its vector as a KV value."""
    head = record_head(document) if isinstance(document, Document) else document
    return head + base64.b64encode(np.asarray(vector, _VECTOR_DTYPE).tobytes()) + _TAIL


def decode_document(value: bytes) -> tuple[Document, np.ndarray]:
    """A document and its vector from a KV value (ValueError, KeyError or TypeError when
    malformed)."""
    record: dict[str, Any] = json.loads(value)
    metadata = record["metadata"]
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be an object")
    vector = np.frombuffer(base64.b64decode(record["vector"], validate=True), _VECTOR_DTYPE)
    return Document(str(record["id"]), str(record["text"]), metadata), vector
