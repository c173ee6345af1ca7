"""The domain's values: a chat call and what comes back, in OpenAI's message format.

litellm speaks OpenAI's format to every provider, so messages, tools and response formats stay
OpenAI-shaped dicts here; the gRPC converters and the gateway's OpenAI surface map to and from
them. Nothing in this module knows gRPC.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, replace
from typing import Any

Message = dict[str, Any]
"""An OpenAI chat message: {"role", "content", optional "name", "tool_calls", "tool_call_id"}."""

ANONYMOUS = "anonymous"
"""The API key id of calls made while auth is off."""


class CacheMode(enum.Enum):
    """How a call uses the response cache."""

    DEFAULT = "default"
    DISABLED = "disabled"
    REFRESH = "refresh"


@dataclass(frozen=True)
class ChatCall:
    """One chat request, validated.

    Attributes:
        model: The model name (a router model group or a local model).
        messages: OpenAI-format messages, oldest first (without conversation history).
        params: OpenAI parameters passed to the provider (`nexus.llm.validation.FORWARDED`:
            temperature, top_p, max_tokens, stop, seed, response_format, tools, tool_choice,
            reasoning_effort, ...). Absent keys are provider defaults.
        conversation_id: The conversation to continue and append to, or "".
        cache_mode: Cache use.
        api_key_id: Who calls (usage, budgets, conversation ownership).
        raw_params: Parameters by their OpenAI names as the client's JSON, not yet checked
            (the request's `openai_parameters`); validation checks them, merges them into
            `messages` and `params`, and empties this.
    """

    model: str
    messages: list[Message]
    params: dict[str, Any] = field(default_factory=dict)
    conversation_id: str = ""
    cache_mode: CacheMode = CacheMode.DEFAULT
    api_key_id: str = ANONYMOUS
    raw_params: dict[str, Any] = field(default_factory=dict)

    def with_messages(self, messages: list[Message]) -> ChatCall:
        """The same call over other messages (history prepended, say)."""
        return replace(self, messages=messages)


@dataclass(frozen=True)
class TokenUsage:
    """Tokens and cost of one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    """A finished chat completion.

    Attributes:
        id: The completion's id.
        model: The model name asked for.
        provider: The provider that answered ("openai", "nexus-local", ...).
        message: The assistant message (OpenAI format, tool calls included).
        finish_reason: "stop", "length", "tool_calls" or "content_filter".
        usage: Tokens and cost (zero cost when cached).
        cached: Served from a cache.
        created: Unix time of creation.
        conversation_id: The conversation it was appended to, or "".
    """

    id: str
    model: str
    provider: str
    message: Message
    finish_reason: str
    usage: TokenUsage
    cached: bool = False
    created: float = field(default_factory=time.time)
    conversation_id: str = ""


@dataclass(frozen=True)
class Chunk:
    """A piece of a streamed completion.

    Attributes:
        id, model, provider, created, cached, conversation_id: As in `Completion`, the same in
            every chunk of a stream.
        role: "assistant" in the first chunk.
        content: Text since the previous chunk.
        tool_calls: OpenAI-format tool-call deltas ({"index", "id", "type",
            "function": {"name", "arguments"}}).
        finish_reason: Set in the last chunk.
        usage: Set in the last chunk.
    """

    id: str
    model: str
    provider: str
    created: float
    role: str = ""
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = ""
    usage: TokenUsage | None = None
    cached: bool = False
    conversation_id: str = ""


@dataclass(frozen=True)
class UsageRecord:
    """What one call cost, for metrics, events, totals and budgets.

    Attributes:
        api_key_id: Who called.
        operation: "chat", "embed" or "extract".
        model: The model name asked for.
        provider: The provider that answered.
        usage: Tokens and cost.
        latency_s: Wall time of the call.
        cached: Served from a cache.
        time: Unix time the call ended.
    """

    api_key_id: str
    operation: str
    model: str
    provider: str
    usage: TokenUsage
    latency_s: float
    cached: bool = False
    time: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Embeddings:
    """Vectors of texts, in input order.

    Attributes:
        model: The embedding model.
        vectors: One float32 row per text (a numpy array of shape (n, dimensions)).
        usage: Tokens and cost.
    """

    model: str
    vectors: Any
    usage: TokenUsage

    @property
    def dimensions(self) -> int:
        """Length of each vector."""
        return int(self.vectors.shape[1])
