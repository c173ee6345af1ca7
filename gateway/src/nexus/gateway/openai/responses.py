"""The llm service's replies as OpenAI JSON: chat completions, stream chunks, embeddings and
model objects (the schemas `CreateChatCompletionResponse`, `CreateChatCompletionStreamResponse`,
`CreateEmbeddingResponse`, `ListModelsResponse` and `Model` of OpenAI's API)."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from nexus.api.llm.v1 import llm_service_pb2 as pb

CACHED_HEADER = "X-Nexus-Cached"
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")
OWNER = "nexus"

Json = dict[str, Any]
Clock = Callable[[], float]

_KINDS = {pb.ModelInfo.KIND_CHAT: "chat", pb.ModelInfo.KIND_EMBEDDING: "embedding"}


def cached_header(cached: bool) -> dict[str, str]:
    """The `X-Nexus-Cached` header: whether the answer came from the response cache."""
    return {CACHED_HEADER: "true" if cached else "false"}


def usage(value: pb.Usage) -> Json:
    """OpenAI's `CompletionUsage`."""
    total = value.total_tokens or value.prompt_tokens + value.completion_tokens
    return {
        "prompt_tokens": value.prompt_tokens,
        "completion_tokens": value.completion_tokens,
        "total_tokens": total,
    }


def finish_reason(value: str) -> str:
    """An OpenAI finish reason ("stop" for anything the clients would not know)."""
    return value if value in FINISH_REASONS else "stop"


def completion_id(value: str) -> str:
    """The completion's id, or a new one in OpenAI's style when the service sent none."""
    return value or f"chatcmpl-{uuid.uuid4().hex}"


# Chat.


def chat_completion(reply: pb.ChatResponse, clock: Clock = time.time) -> Json:
    """The `chat.completion` object of a ChatResponse."""
    return {
        "id": completion_id(reply.id),
        "object": "chat.completion",
        "created": reply.create_time.seconds or int(clock()),
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": assistant_message(reply.message),
                "logprobs": None,
                "finish_reason": finish_reason(reply.finish_reason),
            }
        ],
        "usage": usage(reply.usage),
    }


def assistant_message(message: pb.ChatMessage) -> Json:
    """The reply message; its content is null when it only calls tools."""
    out: Json = {
        "role": "assistant",
        "content": message.content if message.content or not message.tool_calls else None,
        "refusal": None,
    }
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": call.type or "function",
                "function": {"name": call.function.name, "arguments": call.function.arguments},
            }
            for call in message.tool_calls
        ]
    return out


class ChunkRenderer:
    """Turns a stream of StreamChatResponse into `chat.completion.chunk` objects.

    The id and creation time are fixed by the first message, so every chunk of a stream shares
    them. With `include_usage`, every chunk has `"usage": null` and `final` adds the chunk with
    the usage and no choices that OpenAI sends last.

    Args:
        include_usage: `stream_options.include_usage`.
        clock: Unix seconds, for a creation time the service did not send.
    """

    def __init__(self, *, include_usage: bool, clock: Clock = time.time) -> None:
        self._include_usage = include_usage
        self._clock = clock
        self._head: Json | None = None
        self._usage: Json | None = None

    def chunks(self, message: pb.StreamChatResponse) -> list[Json]:
        """The chunks of one message: none when it carries only usage."""
        head = self._head_of(message)
        if message.HasField("usage"):
            self._usage = usage(message.usage)
        delta = _delta(message)
        if not delta and not message.finish_reason:
            return []
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason(message.finish_reason)
            if message.finish_reason
            else None,
        }
        return [self._chunk(head, [choice])]

    def final(self) -> list[Json]:
        """What ends the stream: the usage chunk, when it was asked for."""
        if not self._include_usage or self._head is None:
            return []
        totals = self._usage or usage(pb.Usage())
        return [{**self._chunk(self._head, []), "usage": totals}]

    def _head_of(self, message: pb.StreamChatResponse) -> Json:
        if self._head is None:
            self._head = {
                "id": completion_id(message.id),
                "object": "chat.completion.chunk",
                "created": message.create_time.seconds or int(self._clock()),
                "model": message.model,
            }
        return self._head

    def _chunk(self, head: Json, choices: list[Json]) -> Json:
        chunk = {**head, "choices": choices}
        if self._include_usage:
            chunk["usage"] = None
        return chunk


def _delta(message: pb.StreamChatResponse) -> Json:
    """The delta: the role in the first chunk, then text and tool-call fragments."""
    delta: Json = {}
    if message.role:
        delta["role"] = message.role
    if message.content or message.role:
        delta["content"] = message.content
    if message.tool_calls:
        delta["tool_calls"] = [_tool_call_delta(d) for d in message.tool_calls]
    return delta


def _tool_call_delta(delta: pb.ToolCallDelta) -> Json:
    """A tool-call fragment: id, type and name come in the call's first fragment only."""
    out: Json = {"index": delta.index}
    if delta.id:
        out["id"] = delta.id
    if delta.type or delta.id:
        out["type"] = delta.type or "function"
    function: Json = {}
    if delta.name:
        function["name"] = delta.name
    if delta.arguments or delta.name:
        function["arguments"] = delta.arguments
    out["function"] = function
    return out


# Embeddings.


def embeddings(reply: pb.EmbedResponse, encoding_format: str) -> Json:
    """The `list` of `embedding` objects; base64 vectors are little-endian float32, as OpenAI's
    clients decode them."""
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(e.values, encoding_format)}
        for i, e in enumerate(reply.embeddings)
    ]
    prompt_tokens = reply.usage.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": reply.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _vector(values: Iterable[float], encoding_format: str) -> list[float] | str:
    floats = list(values)
    if encoding_format != "base64":
        return floats
    return base64.b64encode(struct.pack(f"<{len(floats)}f", *floats)).decode("ascii")


# Models.


def model_object(info: pb.ModelInfo) -> Json:
    """OpenAI's `model` object, with what Nexus knows of the model beside it."""
    out: Json = {
        "id": info.id,
        "object": "model",
        "created": 0,
        "owned_by": info.providers[0] if info.providers else OWNER,
        "kind": _KINDS.get(info.kind, "unknown"),
        "providers": list(info.providers),
    }
    for name in ("context_window", "max_output_tokens", "dimensions"):
        if value := getattr(info, name):
            out[name] = value
    return out


def model_list(reply: pb.ListModelsResponse) -> Json:
    """The `list` of models."""
    return {"object": "list", "data": [model_object(m) for m in reply.models]}


def find_model(reply: pb.ListModelsResponse, model: str) -> pb.ModelInfo | None:
    """The model of that id, if listed."""
    return next((m for m in reply.models if m.id == model), None)
