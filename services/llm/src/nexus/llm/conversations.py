"""Stored conversations: their messages, owned by an API key, expiring when left untouched.

One KV entry per conversation in the bucket `llm_conversations`, under the key
`<owner>.<id>` (the owner base64url-encoded), so one owner's conversations are a subject
filter away and nobody reaches another owner's entries by id. The bucket's max age is the
conversation TTL: every change rewrites the entry, so a conversation lives until it has been
left alone for that long. Appends compare and set the entry's revision, so concurrent appends
from several replicas all land.

A record keeps the idempotent calls that wrote it (never shown): a create or append run again
after its first run stored its write (its process died before recording the outcome) finds its
call there and answers with the stored conversation instead of writing again; a conversation
made by an idempotent call has an id derived from the call, so its run again finds it by id.

`trim_to_context` fits a conversation's messages into a model's context window; appends use it
too, to keep a conversation within its message and size limits.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import json
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import nats.errors
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nexus.common.errors import Aborted, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from nexus.common.idempotency import new_id, ran_before, with_call
from nexus.common.kv import open_key_value
from nexus.common.paging import page_request, paginate
from nexus.llm.settings import LlmSettings
from nexus.llm.types import Message
from nexus.llm.validation import ROLES

BUCKET = "nexus_llm_conversations"
MAX_RECORD_BYTES = 1_000_000
"""Largest stored conversation, JSON-encoded (under NATS's default 1 MiB message limit)."""
MAX_LABELS = 32
MAX_LABEL_CHARS = 256
MAX_MODEL_CHARS = 256
MAX_OWNER_CHARS = 256
CAS_ATTEMPTS = 32
"""Tries of a compare-and-set append before giving up with ABORTED."""
INSTRUCTION_ROLES = frozenset({"system", "developer"})
"""Roles that trimming never drops."""
_ID = re.compile(r"^[0-9a-f]{32}$")
_FORMAT = 1


@dataclass(frozen=True)
class ConversationRecord:
    """A stored conversation.

    Attributes:
        id: Its id (32 hex digits).
        owner: The API key id that created it.
        model: Its default model ("" when requests must name one).
        messages: OpenAI-format messages, oldest first (empty in listings).
        labels: Free labels.
        create_time: Unix time of creation.
        update_time: Unix time of the last change; it expires a TTL after this.
        message_count: Number of messages, also when `messages` is left out.
        calls: The newest idempotent calls that created or appended to it (never shown).
    """

    id: str
    owner: str
    model: str
    messages: list[Message]
    labels: dict[str, str]
    create_time: float
    update_time: float
    message_count: int = field(default=-1)
    calls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.message_count < 0:
            object.__setattr__(self, "message_count", len(self.messages))

    def without_messages(self) -> ConversationRecord:
        """The same record with its messages left out (its count kept)."""
        return replace(self, messages=[])


class ConversationStore:
    """Conversations in a KV bucket, each visible to its owner only.

    Args:
        js: JetStream of the service's NATS connection.
        settings: `conversation_ttl_s` (bucket max age), `max_conversation_messages`.
        bucket: The KV bucket (tests use their own).

    (Annotations after the `list` method spell the type `builtins.list`: in the class body the
    method's name hides the builtin from mypy.)
    """

    def __init__(self, js: JetStreamContext, settings: LlmSettings, *, bucket: str = BUCKET):
        self._js = js
        self._bucket_name = bucket
        self._ttl_s = settings.conversation_ttl_s
        self._max_messages = settings.max_conversation_messages
        self._kv: KeyValue | None = None

    async def start(self) -> None:
        """Creates or binds the bucket (its max age brought up to the TTL setting)."""
        config = api.KeyValueConfig(
            bucket=self._bucket_name,
            description="Nexus llm: conversations",
            history=1,
            ttl=self._ttl_s,
            max_value_size=MAX_RECORD_BYTES,
        )
        with _reachable():
            self._kv = await open_key_value(self._js, config)

    async def create(
        self, owner: str, *, model: str, messages: list[Message], labels: dict[str, str]
    ) -> ConversationRecord:
        """Stores a new conversation of `owner`.

        Raises:
            InvalidArgument: A malformed message, model or label.
            ResourceExhausted: Too many messages or bytes (reason REQUEST_TOO_LARGE).
        """
        _check_owner(owner)
        if len(model) > MAX_MODEL_CHARS:
            raise InvalidArgument.for_field("model", f"at most {MAX_MODEL_CHARS} characters")
        if len(messages) > self._max_messages:
            raise ResourceExhausted.too_large("messages", len(messages), self._max_messages)
        check_messages(messages)
        _check_labels(labels)
        now = time.time()
        record = ConversationRecord(
            new_id("conversation"),
            owner,
            model,
            list(messages),
            dict(labels),
            now,
            now,
            calls=with_call(()),
        )
        data = _encode(record)
        if len(data) > MAX_RECORD_BYTES:
            raise ResourceExhausted.too_large(
                "the conversation's bytes", len(data), MAX_RECORD_BYTES
            )
        try:
            with _reachable():
                await self._bucket().create(_key(owner, record.id), data)
        except KeyWrongLastSequenceError:
            # The id derives from this idempotent call: its first run created the conversation.
            return await self.get(owner, record.id)
        return record

    async def get(self, owner: str, conversation_id: str) -> ConversationRecord:
        """A conversation of `owner`, with its messages.

        Raises:
            NotFound: No such conversation of this owner (whether or not another owns one).
            InvalidArgument: A malformed id.
        """
        _, record = await self._load(owner, conversation_id)
        return record

    async def list(
        self, owner: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ConversationRecord], str]:
        """One page of `owner`'s conversations, most recently changed first, without messages
        (paged as `nexus.common.paging` says).

        Args:
            owner: The API key id.
            page_size: Conversations on the page (0: the default).
            page_token: "" for the first page, else a previous page's next token.

        Returns:
            The page and the next page's token ("" after the last page). A token marks a
            position in the order of changes, so a conversation that changes while pages are
            read moves to the front and is not listed twice.
        """
        _check_owner(owner)
        page = page_request(page_size, page_token, scope=f"conversations/{owner}")
        with _reachable():
            revisions = await self._revisions(owner)
        newer_first = sorted(((rev, key) for key, rev in revisions.items()), reverse=True)
        listed, next_token = paginate(newer_first, lambda item: -item[0], page)
        with _reachable():
            records = await asyncio.gather(*(self._read(key) for _, key in listed))
        return [r.without_messages() for r in records if r and r.owner == owner], next_token

    async def append(
        self, owner: str, conversation_id: str, messages: builtins.list[Message]
    ) -> ConversationRecord:
        """Appends messages to a conversation of `owner`, atomically.

        Past `max_conversation_messages` messages or `MAX_RECORD_BYTES` bytes, the oldest
        non-system messages go (see `trim_to_context`).

        Raises:
            NotFound: No such conversation of this owner.
            InvalidArgument: A malformed message or id.
            ResourceExhausted: The new messages alone exceed the limits.
            Aborted: Other appends kept winning the compare-and-set.
        """
        if not messages:
            raise InvalidArgument.for_field("messages", "at least one message is required")
        check_messages(messages)
        for attempt in range(CAS_ATTEMPTS):
            revision, record = await self._load(owner, conversation_id)
            if ran_before(record.calls):
                return record  # appended by this call's first run
            updated = self._extended(record, messages)
            try:
                with _reachable():
                    await self._bucket().update(
                        _key(owner, conversation_id), _encode(updated), last=revision
                    )
            except KeyWrongLastSequenceError:
                await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
                continue
            return updated
        raise Aborted(f"conversation {conversation_id} changed too often to append; retry")

    async def delete(self, owner: str, conversation_id: str) -> None:
        """Deletes a conversation of `owner`.

        Raises:
            NotFound: No such conversation of this owner.
        """
        await self._load(owner, conversation_id)
        with _reachable():
            await self._bucket().delete(_key(owner, conversation_id))

    def _extended(
        self, record: ConversationRecord, messages: builtins.list[Message]
    ) -> ConversationRecord:
        """`record` with `messages` appended, trimmed to the message and byte limits, and the
        running idempotent call remembered."""
        combined = trim_to_context([*record.messages, *messages], len, self._max_messages)
        if len(combined) > self._max_messages:
            raise ResourceExhausted.too_large("messages", len(combined), self._max_messages)
        updated = replace(
            record,
            messages=combined,
            update_time=time.time(),
            message_count=-1,
            calls=with_call(record.calls),
        )
        overhead = len(_encode(replace(updated, messages=[])))
        if overhead + _size(combined) > MAX_RECORD_BYTES:
            combined = trim_to_context(combined, _size, MAX_RECORD_BYTES - overhead)
            updated = replace(updated, messages=combined, message_count=-1)
        size = len(_encode(updated))
        if size > MAX_RECORD_BYTES:
            raise ResourceExhausted.too_large("the conversation's bytes", size, MAX_RECORD_BYTES)
        return updated

    async def _load(self, owner: str, conversation_id: str) -> tuple[int, ConversationRecord]:
        """The revision and record of a conversation of `owner`; NotFound otherwise."""
        _check_owner(owner)
        if not _ID.match(conversation_id):
            raise InvalidArgument.for_field("conversation_id", "not a conversation id")
        try:
            with _reachable():
                entry = await self._bucket().get(_key(owner, conversation_id))
        except KeyNotFoundError as err:
            raise NotFound(f"conversation {conversation_id} does not exist") from err
        record = _decode(entry.value or b"")
        if record.owner != owner or record.id != conversation_id:
            raise NotFound(f"conversation {conversation_id} does not exist")
        return entry.revision or 0, record

    async def _read(self, key: str) -> ConversationRecord | None:
        """The record under `key`, or None when it went in the meantime."""
        try:
            entry = await self._bucket().get(key)
        except KeyNotFoundError:
            return None
        return _decode(entry.value or b"")

    async def _revisions(self, owner: str) -> dict[str, int]:
        """The keys of `owner`'s conversations and their latest revisions (no values read)."""
        watcher = await self._bucket().watch(
            f"{_owner_token(owner)}.*", meta_only=True, ignore_deletes=True
        )
        revisions: dict[str, int] = {}
        try:
            async for entry in watcher:
                if entry is None:  # the end of the current values
                    break
                revisions[entry.key] = entry.revision or 0
                if entry.delta == 0:
                    break
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return revisions

    def _bucket(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv


def trim_to_context(
    messages: list[Message], count_tokens: Callable[[list[Message]], int], budget_tokens: int
) -> list[Message]:
    """Drops the oldest messages until `count_tokens` of the rest is within the budget.

    System and developer messages and the newest message stay (with the assistant message whose
    tool call the newest answers, and that call's other answers). An assistant message that
    called tools goes together with the tool messages answering it, so no tool message is left
    without its call. When even what stays exceeds the budget, that is returned: the caller
    reports the overflow.

    Args:
        messages: Oldest first.
        count_tokens: Size of a message list (tokens, or anything that shrinks with it).
        budget_tokens: Largest size allowed.
    """
    if not messages or count_tokens(messages) <= budget_tokens:
        return list(messages)
    units = _droppable_units(messages[: _last_turn_start(messages)])
    if not units:
        return list(messages)

    def without(n_units: int) -> list[Message]:
        dropped = {i for unit in units[:n_units] for i in unit}
        return [m for i, m in enumerate(messages) if i not in dropped]

    # Fewer tokens the more units go: search the fewest to drop (log2(n) counts, not n).
    low, high = 1, len(units)
    if count_tokens(without(high)) > budget_tokens:
        return without(high)
    while low < high:
        middle = (low + high) // 2
        if count_tokens(without(middle)) <= budget_tokens:
            high = middle
        else:
            low = middle + 1
    return without(low)


def _last_turn_start(messages: list[Message]) -> int:
    """Index of the newest message, or of the tool call it answers when it is a tool message."""
    start = len(messages) - 1
    while start > 0 and messages[start].get("role") == "tool":
        start -= 1
    return start


def _droppable_units(messages: list[Message]) -> list[list[int]]:
    """Indices of the messages trimming may drop, grouped into what must go together, oldest
    first: a message, with the tool messages after it when it called tools."""
    units: list[list[int]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role in INSTRUCTION_ROLES:
            continue
        if role == "tool" and units:
            units[-1].append(i)
        else:
            units.append([i])
    return units


def check_messages(messages: list[Message], where: str = "messages") -> None:
    """Raises InvalidArgument for a message a conversation cannot hold.

    A message is a dict with a known role and string content (empty only for an assistant
    message); tool calls come from assistant messages only and a tool message names its call.
    """
    for i, message in enumerate(messages):
        path = f"{where}[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidArgument.for_field(path, "must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidArgument.for_field(
                f"{path}.role", f"{role!r} is not one of {sorted(ROLES)}"
            )
        content = message.get("content", "")
        if not isinstance(content, str):
            raise InvalidArgument.for_field(f"{path}.content", "must be a string")
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list) or not all(isinstance(c, Mapping) for c in calls):
            raise InvalidArgument.for_field(f"{path}.tool_calls", "must be a list of objects")
        if calls and role != "assistant":
            raise InvalidArgument.for_field(
                f"{path}.tool_calls", "only assistant messages call tools"
            )
        if role != "assistant" and not content:
            raise InvalidArgument.for_field(f"{path}.content", "must not be empty")
        call_id = message.get("tool_call_id")
        if role == "tool" and not (isinstance(call_id, str) and call_id):
            raise InvalidArgument.for_field(f"{path}.tool_call_id", "a tool message needs one")
        if not isinstance(message.get("name", ""), str):
            raise InvalidArgument.for_field(f"{path}.name", "must be a string")


def _check_owner(owner: str) -> None:
    if not owner or len(owner) > MAX_OWNER_CHARS:
        raise InvalidArgument.for_field("owner", f"must be 1 to {MAX_OWNER_CHARS} characters")


def _check_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise ResourceExhausted.too_large("labels", len(labels), MAX_LABELS)
    for key, value in labels.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_LABEL_CHARS:
            raise InvalidArgument.for_field("labels", f"keys must be 1 to {MAX_LABEL_CHARS} chars")
        if not isinstance(value, str) or len(value) > MAX_LABEL_CHARS:
            raise InvalidArgument.for_field(
                f"labels[{key}]", f"must be a string of at most {MAX_LABEL_CHARS} characters"
            )


def _owner_token(owner: str) -> str:
    """The owner as one KV key token: base64url without padding."""
    return base64.urlsafe_b64encode(owner.encode()).decode().rstrip("=")


def _key(owner: str, conversation_id: str) -> str:
    return f"{_owner_token(owner)}.{conversation_id}"


def _size(messages: list[Message]) -> int:
    """Bytes of `messages` in a stored record."""
    return len(json.dumps(messages, separators=(",", ":"), ensure_ascii=False).encode())


def _encode(record: ConversationRecord) -> bytes:
    value: dict[str, Any] = {
        "v": _FORMAT,
        "id": record.id,
        "owner": record.owner,
        "model": record.model,
        "messages": record.messages,
        "labels": record.labels,
        "create_time": record.create_time,
        "update_time": record.update_time,
        "calls": record.calls,
    }
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _decode(data: bytes) -> ConversationRecord:
    try:
        value = json.loads(data)  # a ValueError when it is not JSON
        return ConversationRecord(
            id=value["id"],
            owner=value["owner"],
            model=value["model"],
            messages=value["messages"],
            labels=value["labels"],
            create_time=value["create_time"],
            update_time=value["update_time"],
            calls=tuple(value.get("calls", ())),  # absent from records written before
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"a stored conversation is malformed: {err!r}") from err


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Turns NATS failures (no server, timeouts) into Unavailable; KV answers pass through."""
    try:
        yield
    except (KeyNotFoundError, KeyWrongLastSequenceError):
        raise
    except (TimeoutError, nats.errors.Error) as err:
        raise Unavailable("the conversation store cannot be reached") from err
