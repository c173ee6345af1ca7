"""The response caches: identical chat requests (exact) and, optionally, paraphrases (semantic).

The exact cache has two tiers: a `TTLCache` in each replica's memory in front of the NATS KV
bucket `llm_cache`, which every replica shares and whose entries the server expires after the
cache TTL. A memory hit returns a `Completion` kept ready to serve, with no parsing at all; a KV
hit parses JSON once and fills memory for the entry's remaining lifetime. Writes to KV run in
the background (a failed one is logged, never raised), so a miss costs the caller nothing extra.

The semantic cache lives in each replica's memory only: entries are grouped by everything but
the last user message (model, parameters, earlier messages) and matched by the cosine
similarity of that message's embedding.

A served completion is marked `cached`, costs nothing (its token counts stay) and names no
conversation (the engine sets that).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import nats.errors
import numpy as np
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from nexus.common.caching import TTLCache
from nexus.common.kv import open_key_value
from nexus.common.telemetry.metrics import record_cache_request
from nexus.llm.settings import LlmSettings
from nexus.llm.types import ChatCall, Completion, Message, TokenUsage

BUCKET = "nexus_llm_cache"
MEMORY_CACHE = "llm_response"
"""The `cache` metric label of the in-memory tier."""
KV_CACHE = "llm_response_kv"
"""The `cache` metric label of the shared NATS tier."""
SEMANTIC_CACHE = "llm_semantic"
"""The `cache` metric label of the semantic cache."""
MAX_KV_ENTRY_BYTES = 512 * 1024
"""Larger serialized completions stay in memory only."""
MAX_PENDING_WRITES = 1_024
"""KV writes in flight at once; beyond this, new entries stay in memory only (logged)."""
SEMANTIC_MAX_CHARS = 1_000
"""Longest last user message the semantic cache matches: the embedding model reads about 256
tokens, so two longer texts that differ only after that would look the same to it."""
_FORMAT = 1

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], Awaitable[np.ndarray]]
"""Embeds texts: one row per text."""


def cache_key(call: ChatCall, messages: list[Message]) -> str:
    """The exact-cache key of a call: a sha256 hex of everything that shapes the answer.

    Args:
        call: The call (its model and every parameter count).
        messages: The messages actually sent, conversation history included.
    """
    return _digest({"v": _FORMAT, "model": call.model, "messages": messages, "params": call.params})


def as_cached(completion: Completion) -> Completion:
    """`completion` as served from a cache: marked cached, free, in no conversation."""
    return replace(
        completion,
        cached=True,
        usage=replace(completion.usage, cost_usd=0.0),
        conversation_id="",
    )


def encode_completion(completion: Completion, stored: float) -> bytes:
    """The KV form of a completion: compact JSON with the time it was stored."""
    usage = completion.usage
    record = {
        "v": _FORMAT,
        "id": completion.id,
        "model": completion.model,
        "provider": completion.provider,
        "message": completion.message,
        "finish_reason": completion.finish_reason,
        "usage": [usage.prompt_tokens, usage.completion_tokens, usage.cost_usd],
        "created": completion.created,
        "stored": stored,
    }
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def decode_completion(data: bytes) -> tuple[Completion, float]:
    """A completion and the time it was stored, from `encode_completion`'s bytes.

    Raises:
        ValueError: Malformed data (including a format this version does not read).
    """
    try:
        record = json.loads(data)
        if record["v"] != _FORMAT:
            raise ValueError(f"cache entry format {record['v']!r}")
        prompt, completion_tokens, cost = record["usage"]
        completion = Completion(
            id=str(record["id"]),
            model=str(record["model"]),
            provider=str(record["provider"]),
            message=dict(record["message"]),
            finish_reason=str(record["finish_reason"]),
            usage=TokenUsage(int(prompt), int(completion_tokens), float(cost)),
            created=float(record["created"]),
        )
        return completion, float(record["stored"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"malformed cache entry: {err!r}") from err


class ResponseCache:
    """Completions of identical requests, in memory and in a KV bucket shared by replicas.

    Args:
        js: JetStream of the service's NATS connection.
        settings: `cache_max_entries` (memory), `cache_ttl_s` (both tiers).
        bucket: The KV bucket (tests use their own).
    """

    def __init__(self, js: JetStreamContext, settings: LlmSettings, *, bucket: str = BUCKET):
        self._js = js
        self._bucket_name = bucket
        self._ttl_s = settings.cache_ttl_s
        self._memory: TTLCache[str, Completion] = TTLCache(
            MEMORY_CACHE, maxsize=settings.cache_max_entries, ttl_s=settings.cache_ttl_s
        )
        self._kv: KeyValue | None = None
        self._writes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Creates or binds the KV bucket (its TTL brought up to the setting)."""
        config = api.KeyValueConfig(
            bucket=self._bucket_name,
            description="Nexus llm: cached chat completions",
            history=1,
            ttl=self._ttl_s,
            max_value_size=MAX_KV_ENTRY_BYTES,
            direct=True,
        )
        self._kv = await open_key_value(self._js, config)

    async def stop(self) -> None:
        """Waits for the KV writes in flight."""
        await self.flush()

    async def flush(self) -> None:
        """Waits until every KV write started so far has finished (or failed, logged)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def get(self, key: str) -> Completion | None:
        """The cached completion of `key` (marked cached, zero cost), or None.

        Memory answers first; on a miss there the shared KV tier does, and fills memory. A KV
        tier that cannot be reached counts as a miss (logged).
        """
        completion = self.get_local(key)
        if completion is not None:
            return completion
        return await self.get_shared(key)

    def get_local(self, key: str) -> Completion | None:
        """`get` from this replica's memory only: no waiting."""
        return self._memory.get(key)

    async def get_shared(self, key: str) -> Completion | None:
        """`get` from the shared KV tier only (a hit fills memory)."""
        return await self._get_shared(key)

    async def put(self, key: str, completion: Completion) -> None:
        """Caches `completion` under `key`: in memory now, in KV in the background."""
        cached = as_cached(completion)
        self._memory.set(key, cached)
        data = encode_completion(cached, time.time())
        if len(data) > MAX_KV_ENTRY_BYTES:
            log.debug("completion of %d bytes is cached in memory only", len(data))
            return
        if len(self._writes) >= MAX_PENDING_WRITES:
            log.warning("too many cache writes in flight: a completion is cached in memory only")
            return
        write = asyncio.create_task(self._write(key, data))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    async def _get_shared(self, key: str) -> Completion | None:
        try:
            entry = await self._bucket().get(key)
        except KeyNotFoundError:
            record_cache_request(KV_CACHE, False)
            return None
        except (TimeoutError, nats.errors.Error):
            log.warning("the shared response cache cannot be read", exc_info=True)
            record_cache_request(KV_CACHE, False)
            return None
        completion = self._fill(key, entry.value or b"")
        record_cache_request(KV_CACHE, completion is not None)
        return completion

    def _fill(self, key: str, data: bytes) -> Completion | None:
        """Parses a KV entry and keeps it in memory for the rest of its life; None if stale."""
        try:
            completion, stored = decode_completion(data)
        except ValueError:
            log.warning("ignoring a malformed response cache entry %s", key, exc_info=True)
            return None
        left = self._ttl_s - (time.time() - stored)
        if left <= 0:
            return None
        cached = as_cached(completion)
        self._memory.set(key, cached, ttl_s=left)
        return cached

    async def _write(self, key: str, data: bytes) -> None:
        try:
            await self._bucket().put(key, data)
        except Exception:  # a background task: nobody else would see it
            log.warning("a completion could not be stored in the shared cache", exc_info=True)

    def _bucket(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv


@dataclass
class _Entry:
    space: str
    vector: np.ndarray
    completion: Completion
    expires: float


class _Space:
    """The entries of one namespace, with their vectors stacked for one matrix product."""

    def __init__(self) -> None:
        self.entries: dict[int, _Entry] = {}
        self._matrix: np.ndarray | None = None
        self._order: list[_Entry] = []

    def add(self, entry_id: int, entry: _Entry) -> None:
        self.entries[entry_id] = entry
        self._matrix = None

    def remove(self, entry_id: int) -> None:
        if self.entries.pop(entry_id, None) is not None:
            self._matrix = None

    def best(self, query: np.ndarray) -> tuple[_Entry, float]:
        """The entry most similar to `query` (unit vectors) and its cosine similarity."""
        if self._matrix is None:
            self._order = list(self.entries.values())
            self._matrix = np.stack([e.vector for e in self._order])
        similarities = self._matrix @ query
        i = int(np.argmax(similarities))
        return self._order[i], float(similarities[i])


class SemanticCache:
    """Completions of requests whose last user message means the same, per replica.

    Only calls without tools whose last message is a user message with text (of at most
    `SEMANTIC_MAX_CHARS`) take part; for the others `get` misses and `put` does nothing.

    Args:
        embed: Embeds texts (the service's embedding model).
        threshold: Least cosine similarity served, in (0, 1].
        max_entries: Most entries kept, in all namespaces together (oldest out first).
        ttl_s: Seconds an entry is served.
        max_chars: Longest last user message matched.
    """

    def __init__(
        self,
        embed: Embed,
        threshold: float,
        *,
        max_entries: int,
        ttl_s: float,
        max_chars: int = SEMANTIC_MAX_CHARS,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("max_entries and ttl_s must be positive")
        self._embed = embed
        self._threshold = threshold
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._max_chars = max_chars
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # oldest first
        self._spaces: dict[str, _Space] = {}
        self._next_id = 0
        # The vector of a miss's text, so that the put after it does not embed it again.
        self._vectors: TTLCache[str, np.ndarray] = TTLCache(
            "llm_semantic_vectors", maxsize=256, ttl_s=60.0
        )

    def __len__(self) -> int:
        """Entries not yet expired."""
        self._expire()
        return len(self._entries)

    async def get(self, call: ChatCall, messages: list[Message]) -> Completion | None:
        """The completion of the most similar earlier request, if similar enough, or None.

        Args:
            call: The call (model and parameters).
            messages: The messages actually sent, history included.
        """
        text = semantic_text(call, messages, self._max_chars)
        if text is None:
            return None
        self._expire()
        space = self._spaces.get(_namespace(call, messages))
        if space is None:
            record_cache_request(SEMANTIC_CACHE, False)
            return None
        query = await self._vector(text)
        hit = None
        if query is not None and space.entries:
            entry, similarity = space.best(query)
            if similarity >= self._threshold and entry.expires > time.monotonic():
                hit = entry.completion
        record_cache_request(SEMANTIC_CACHE, hit is not None)
        return hit

    async def put(self, call: ChatCall, messages: list[Message], completion: Completion) -> None:
        """Keeps `completion` as the answer to `messages` (when the call takes part)."""
        text = semantic_text(call, messages, self._max_chars)
        if text is None:
            return
        vector = await self._vector(text)
        if vector is None:
            return
        name = _namespace(call, messages)
        entry = _Entry(name, vector, as_cached(completion), time.monotonic() + self._ttl_s)
        self._next_id += 1
        self._entries[self._next_id] = entry
        self._spaces.setdefault(name, _Space()).add(self._next_id, entry)
        self._expire()
        while len(self._entries) > self._max_entries:
            self._drop_oldest()

    async def _vector(self, text: str) -> np.ndarray | None:
        """The unit embedding of `text`, or None when it cannot be had (logged)."""
        vector = self._vectors.get(text)
        if vector is not None:
            return vector
        try:
            rows = await self._embed([text])
        except Exception:  # the cache is an optimisation: a failing model must not fail calls
            log.warning("the semantic cache could not embed a message", exc_info=True)
            return None
        row = np.asarray(rows, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(row))
        if not np.isfinite(norm) or norm == 0.0:
            return None
        vector = row / norm
        self._vectors.set(text, vector)
        return vector

    def _expire(self) -> None:
        """Drops expired entries: all share one TTL, so they are the oldest."""
        now = time.monotonic()
        while self._entries and next(iter(self._entries.values())).expires <= now:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        entry_id, entry = self._entries.popitem(last=False)
        space = self._spaces[entry.space]
        space.remove(entry_id)
        if not space.entries:
            del self._spaces[entry.space]


def semantic_text(call: ChatCall, messages: list[Message], max_chars: int) -> str | None:
    """The text the semantic cache matches on: the last message's, when the call takes part.

    A call takes part when it offers no tools and its last message is a user message whose
    content is non-empty text of at most `max_chars` characters.
    """
    if call.params.get("tools") or not messages:
        return None
    last = messages[-1]
    content = last.get("content")
    if last.get("role") != "user" or not isinstance(content, str):
        return None
    if not content.strip() or len(content) > max_chars:
        return None
    return content


def _namespace(call: ChatCall, messages: list[Message]) -> str:
    """What must be identical for a semantic hit: model, parameters and earlier messages."""
    return _digest(
        {"v": _FORMAT, "model": call.model, "params": call.params, "context": messages[:-1]}
    )


def _digest(value: Any) -> str:
    """sha256 hex of the canonical JSON of `value` (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
