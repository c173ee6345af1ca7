"""The conversation store on a real NATS KV bucket, and trimming to a context window."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client

from nexus.common.errors import (
    REQUEST_TOO_LARGE,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from nexus.common.nats import connect
from nexus.common.paging import page_request
from nexus.common.settings import NexusSettings
from nexus.llm.conversations import (
    MAX_RECORD_BYTES,
    ConversationRecord,
    ConversationStore,
    trim_to_context,
)
from nexus.llm.settings import LlmSettings
from nexus.llm.types import Message

pytestmark = pytest.mark.integration

OpenStore = Callable[..., Awaitable[ConversationStore]]


def system(text: str = "Be brief.") -> Message:
    return {"role": "system", "content": text}


def user(text: str) -> Message:
    return {"role": "user", "content": text}


def assistant(text: str = "", calls: list[str] | None = None) -> Message:
    message: Message = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {"id": c, "type": "function", "function": {"name": "f", "arguments": "{}"}}
            for c in calls
        ]
    return message


def tool(call_id: str, text: str = "42") -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def owner() -> str:
    """An API key id no other test uses."""
    return f"key-{uuid.uuid4().hex[:8]}"


# --- trimming -------------------------------------------------------------------------------


def chars(messages: list[Message]) -> int:
    """A token counter stand-in that is exact for tests: characters of contents."""
    return sum(len(m.get("content", "")) for m in messages)


def test_trim_keeps_everything_that_fits() -> None:
    messages = [system(), user("a"), assistant("b"), user("c")]
    assert trim_to_context(messages, chars, 1_000) == messages
    assert trim_to_context([], chars, 0) == []


def test_trim_drops_the_oldest_but_keeps_instructions_and_the_newest() -> None:
    messages = [
        system("S"),
        user("u1" * 5),
        assistant("a1" * 5),
        {"role": "developer", "content": "D"},
        user("u2" * 5),
        assistant("a2" * 5),
        user("last"),
    ]
    assert trim_to_context(messages, chars, 30) == [
        system("S"),
        messages[3],
        user("u2" * 5),
        assistant("a2" * 5),
        user("last"),
    ]
    trimmed = trim_to_context(messages, chars, 20)
    assert trimmed == [system("S"), messages[3], assistant("a2" * 5), user("last")]
    assert chars(trimmed) <= 20


def test_trim_drops_tool_calls_with_their_answers() -> None:
    messages = [
        system("S"),
        user("uuuu"),
        assistant("", ["c1", "c2"]),
        tool("c1", "t" * 20),
        tool("c2", "t" * 20),
        assistant("done"),
        user("next"),
    ]
    # Dropping the first user message alone is not enough; the tool results go with their call.
    trimmed = trim_to_context(messages, chars, 20)
    assert trimmed == [system("S"), assistant("done"), user("next")]
    for i, message in enumerate(trimmed):
        if message["role"] == "tool":
            assert any(m.get("tool_calls") for m in trimmed[:i])


def test_trim_keeps_the_call_a_final_tool_message_answers() -> None:
    messages = [
        user("u" * 50),
        assistant("", ["c1", "c2"]),
        tool("c1", "x"),
        tool("c2", "y"),
    ]
    assert trim_to_context(messages, chars, 2) == messages[1:]


def test_trim_returns_the_minimum_when_nothing_fits() -> None:
    messages = [system("S" * 10), user("old"), assistant("old"), user("new" * 10)]
    assert trim_to_context(messages, chars, 5) == [messages[0], messages[3]]
    assert trim_to_context([user("x" * 10)], chars, 5) == [user("x" * 10)]


def test_trim_counts_few_times() -> None:
    calls = 0

    def counting(messages: list[Message]) -> int:
        nonlocal calls
        calls += 1
        return len(messages)

    messages = [system()] + [user(f"m{i}") for i in range(2_000)]
    trimmed = trim_to_context(messages, counting, 101)
    assert trimmed == [system(), *messages[-100:]]
    assert calls <= 15  # a binary search, not one count per dropped message


# --- the store ------------------------------------------------------------------------------


@pytest.fixture
async def open_store(nats_client: Client) -> AsyncIterator[OpenStore]:
    """Opens stores on private buckets (deleted at the end of the test)."""
    buckets: set[str] = set()

    async def open_(
        client: Client | None = None, bucket: str | None = None, **overrides: Any
    ) -> ConversationStore:
        name = bucket or f"test_conv_{uuid.uuid4().hex[:10]}"
        buckets.add(name)
        js = (client or nats_client).jetstream()
        store = ConversationStore(js, LlmSettings(**overrides), bucket=name)
        await store.start()
        return store

    yield open_
    for name in buckets:
        await nats_client.jetstream().delete_key_value(name)


@pytest.fixture
async def store(open_store: OpenStore) -> ConversationStore:
    return await open_store()


async def test_create_get_append_delete(store: ConversationStore) -> None:
    me = owner()
    created = await store.create(
        me, model="gpt-4o-mini", messages=[system()], labels={"project": "demo"}
    )
    assert len(created.id) == 32
    assert int(created.id, 16) >= 0
    assert created.owner == me
    assert created.message_count == 1
    assert created.create_time == created.update_time

    got = await store.get(me, created.id)
    assert got == created

    appended = await store.append(me, created.id, [user("hi"), assistant("hello")])
    assert appended.message_count == 3
    assert [m["content"] for m in appended.messages] == ["Be brief.", "hi", "hello"]
    assert appended.update_time > created.update_time
    assert appended.create_time == created.create_time
    assert await store.get(me, created.id) == appended

    await store.delete(me, created.id)
    with pytest.raises(NotFound):
        await store.get(me, created.id)
    with pytest.raises(NotFound):
        await store.delete(me, created.id)
    with pytest.raises(NotFound):
        await store.append(me, created.id, [user("again")])


async def test_an_empty_conversation_without_a_model(store: ConversationStore) -> None:
    record = await store.create(owner(), model="", messages=[], labels={})
    assert record.message_count == 0
    assert record.model == ""


async def test_others_conversations_are_not_found(store: ConversationStore) -> None:
    alice, mallory = owner(), owner()
    record = await store.create(alice, model="m", messages=[user("secret")], labels={})
    with pytest.raises(NotFound):
        await store.get(mallory, record.id)
    with pytest.raises(NotFound):
        await store.append(mallory, record.id, [user("injected")])
    with pytest.raises(NotFound):
        await store.delete(mallory, record.id)
    assert await store.list(mallory) == ([], "")
    assert (await store.get(alice, record.id)).messages == [user("secret")]


async def test_owner_names_that_are_not_key_tokens(store: ConversationStore) -> None:
    odd, similar = "team.a/b c*>", "team"
    record = await store.create(odd, model="m", messages=[user("x")], labels={})
    await store.create(similar, model="m", messages=[user("y")], labels={})
    assert (await store.get(odd, record.id)).owner == odd
    listed, _ = await store.list(odd)
    assert [r.id for r in listed] == [record.id]


async def test_list_pages_newest_first_without_messages(store: ConversationStore) -> None:
    me = owner()
    ids = [
        (await store.create(me, model="m", messages=[user(f"q{i}")], labels={"i": str(i)})).id
        for i in range(5)
    ]
    await store.create(owner(), model="m", messages=[user("someone else")], labels={})

    seen: list[ConversationRecord] = []
    token = ""
    pages = 0
    while True:
        page, token = await store.list(me, page_size=2, page_token=token)
        pages += 1
        seen.extend(page)
        if not token:
            break
    assert pages == 3
    assert [r.id for r in seen] == ids[::-1]
    assert all(r.messages == [] and r.message_count == 1 for r in seen)
    assert [r.labels["i"] for r in seen] == ["4", "3", "2", "1", "0"]

    # A change makes a conversation the newest.
    await store.append(me, ids[0], [user("more")])
    page, token = await store.list(me, page_size=1)
    assert [r.id for r in page] == [ids[0]]
    assert page[0].message_count == 2
    assert token
    everything, last = await store.list(me)
    assert len(everything) == 5
    assert last == ""


async def test_list_arguments_are_checked(store: ConversationStore) -> None:
    me = owner()
    with pytest.raises(InvalidArgument) as err:
        await store.list(me, page_size=-1)
    assert err.value.violations[0].field == "page_size"
    await store.create(me, model="m", messages=[user("q")], labels={})
    await store.create(me, model="m", messages=[user("q")], labels={})
    _, mine = await store.list(me, page_size=1)
    someone_elses = page_request(1, "", scope=f"conversations/{owner()}").next_token(-1)
    for token in ("garbage!", "bm90IGEgdG9rZW4=", someone_elses):
        with pytest.raises(InvalidArgument) as err:
            await store.list(me, page_token=token)
        assert err.value.violations[0].field == "page_token"
    assert len((await store.list(me, page_size=0))[0]) == 2
    assert len((await store.list(me, page_size=10_000))[0]) == 2  # lowered to the maximum
    assert len((await store.list(me, page_token=mine))[0]) == 1


async def test_untouched_conversations_expire(open_store: OpenStore) -> None:
    store = await open_store(conversation_ttl_s=1.0)
    me = owner()
    idle = await store.create(me, model="m", messages=[user("idle")], labels={})
    busy = await store.create(me, model="m", messages=[user("busy")], labels={})
    started = time.monotonic()
    while await _exists(store, me, idle.id):  # touching `busy` meanwhile keeps it
        assert time.monotonic() - started < 5, "the idle conversation did not expire"
        await asyncio.sleep(0.2)
        await store.append(me, busy.id, [user("still here")])
    assert time.monotonic() - started >= 1.0
    assert await _exists(store, me, busy.id)
    listed, _ = await store.list(me)
    assert [r.id for r in listed] == [busy.id]
    started = time.monotonic()
    while await _exists(store, me, busy.id):
        assert time.monotonic() - started < 5, "the busy conversation did not expire"
        await asyncio.sleep(0.2)
    assert await store.list(me) == ([], "")


async def _exists(store: ConversationStore, me: str, conversation_id: str) -> bool:
    try:
        await store.get(me, conversation_id)
    except NotFound:
        return False
    return True


async def test_concurrent_appends_from_two_replicas_all_land(
    open_store: OpenStore, nexus_settings: NexusSettings
) -> None:
    other = await connect(nexus_settings, "second-replica")
    try:
        first = await open_store()
        second = await open_store(client=other, bucket=first._bucket_name)
        me = owner()
        record = await first.create(me, model="m", messages=[system()], labels={})
        appends = [
            (first if i % 2 else second).append(me, record.id, [user(f"m{i}"), assistant(f"r{i}")])
            for i in range(20)
        ]
        await asyncio.gather(*appends)
        final = await second.get(me, record.id)
    finally:
        await other.drain()
    assert final.message_count == 41
    contents = [m["content"] for m in final.messages[1:]]
    assert sorted(contents) == sorted([f"m{i}" for i in range(20)] + [f"r{i}" for i in range(20)])
    # Each append's messages stay together, in order.
    for i in range(0, 40, 2):
        assert contents[i + 1] == "r" + contents[i][1:]


async def test_appends_keep_the_newest_messages(open_store: OpenStore) -> None:
    store = await open_store(max_conversation_messages=5)
    me = owner()
    record = await store.create(me, model="m", messages=[system(), user("q0")], labels={})
    for i in range(1, 4):
        record = await store.append(me, record.id, [assistant(f"a{i - 1}"), user(f"q{i}")])
    assert [m["content"] for m in record.messages] == ["Be brief.", "a1", "q2", "a2", "q3"]
    record = await store.append(
        me, record.id, [assistant("", ["c1"]), tool("c1"), assistant("ok"), user("q4")]
    )
    assert [m["role"] for m in record.messages] == [
        "system",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    # A tool call goes with its answer, though the count would allow keeping the answer.
    record = await store.append(me, record.id, [assistant("a4")])
    assert [m["content"] for m in record.messages] == ["Be brief.", "ok", "q4", "a4"]

    with pytest.raises(ResourceExhausted) as err:
        await store.create(me, model="m", messages=[user(str(i)) for i in range(6)], labels={})
    assert err.value.reason == REQUEST_TOO_LARGE


async def test_appends_keep_within_the_size_limit(store: ConversationStore) -> None:
    me = owner()
    big = "x" * (MAX_RECORD_BYTES // 3)
    record = await store.create(me, model="m", messages=[system()], labels={})
    for i in range(4):
        record = await store.append(me, record.id, [user(f"{i}{big}")])
    stored = await store.get(me, record.id)
    assert [m["content"][0] for m in stored.messages[1:]] == ["2", "3"]
    assert stored.messages[0] == system()

    huge = "y" * MAX_RECORD_BYTES
    with pytest.raises(ResourceExhausted) as err:
        await store.append(me, record.id, [user(huge)])
    assert err.value.reason == REQUEST_TOO_LARGE
    with pytest.raises(ResourceExhausted):
        await store.create(me, model="m", messages=[user(huge)], labels={})
    assert (await store.get(me, record.id)).message_count == 3


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": "robot", "content": "x"}, "messages[1].role"),
        ({"content": "x"}, "messages[1].role"),
        ({"role": "user", "content": ["parts"]}, "messages[1].content"),
        ({"role": "user", "content": ""}, "messages[1].content"),
        ({"role": "user", "content": "x", "tool_calls": [{"id": "c"}]}, "messages[1].tool_calls"),
        ({"role": "assistant", "content": "", "tool_calls": "c"}, "messages[1].tool_calls"),
        ({"role": "tool", "content": "x"}, "messages[1].tool_call_id"),
        ({"role": "user", "content": "x", "name": 3}, "messages[1].name"),
        ("not a message", "messages[1]"),
    ],
)
async def test_malformed_messages_are_refused(
    store: ConversationStore, message: Any, field: str
) -> None:
    me = owner()
    with pytest.raises(InvalidArgument) as err:
        await store.create(me, model="m", messages=[user("ok"), message], labels={})
    assert err.value.violations[0].field == field
    record = await store.create(me, model="m", messages=[], labels={})
    with pytest.raises(InvalidArgument) as err:
        await store.append(me, record.id, [user("ok"), message])
    assert err.value.violations[0].field == field
    assert (await store.get(me, record.id)).message_count == 0


async def test_other_inputs_are_checked(store: ConversationStore) -> None:
    me = owner()
    with pytest.raises(ResourceExhausted):
        await store.create(me, model="m", messages=[], labels={str(i): "v" for i in range(33)})
    await store.create(me, model="m", messages=[], labels={str(i): "v" for i in range(32)})
    bad_labels: list[tuple[dict[str, Any], str]] = [
        ({"": "v"}, "labels"),
        ({"k" * 257: "v"}, "labels"),
        ({"k": "v" * 257}, "labels[k]"),
        ({"k": 1}, "labels[k]"),
    ]
    for labels, field in bad_labels:
        with pytest.raises(InvalidArgument) as err:
            await store.create(me, model="m", messages=[], labels=labels)
        assert err.value.violations[0].field == field
    with pytest.raises(InvalidArgument) as err:
        await store.create(me, model="m" * 257, messages=[], labels={})
    assert err.value.violations[0].field == "model"
    with pytest.raises(InvalidArgument) as err:
        await store.create("", model="m", messages=[], labels={})
    assert err.value.violations[0].field == "owner"
    for bad_id in ("", "../x", "A" * 32, uuid.uuid4().hex + "0"):
        with pytest.raises(InvalidArgument) as err:
            await store.get(me, bad_id)
        assert err.value.violations[0].field == "conversation_id"
    with pytest.raises(NotFound):
        await store.get(me, uuid.uuid4().hex)
    record = await store.create(me, model="m", messages=[], labels={})
    with pytest.raises(InvalidArgument) as err:
        await store.append(me, record.id, [])
    assert err.value.violations[0].field == "messages"


async def test_a_lost_connection_is_unavailable(
    open_store: OpenStore, nexus_settings: NexusSettings
) -> None:
    other = await connect(nexus_settings, "closing")
    store = await open_store(client=other)
    record = await store.create("me", model="m", messages=[], labels={})
    await other.close()
    with pytest.raises(Unavailable):
        await store.get("me", record.id)
    with pytest.raises(Unavailable):
        await store.list("me")
