"""Protobuf <-> domain values for the llm service's RPCs. Nothing here decides anything."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.llm.budgets import BudgetPeriod, BudgetState
from nexus.llm.conversations import ConversationRecord
from nexus.llm.search import CollectionInfo, Document, Hit
from nexus.llm.types import (
    CacheMode,
    ChatCall,
    Chunk,
    Completion,
    Embeddings,
    Message,
    TokenUsage,
)
from nexus.llm.usage import UsageTotalRow

_CACHE_MODES = {
    pb.CACHE_MODE_UNSPECIFIED: CacheMode.DEFAULT,
    pb.CACHE_MODE_DISABLED: CacheMode.DISABLED,
    pb.CACHE_MODE_REFRESH: CacheMode.REFRESH,
}
_FORMATS = {
    pb.ResponseFormat.TYPE_TEXT: "text",
    pb.ResponseFormat.TYPE_JSON_OBJECT: "json_object",
    pb.ResponseFormat.TYPE_JSON_SCHEMA: "json_schema",
}
_KINDS = {"chat": pb.ModelInfo.KIND_CHAT, "embedding": pb.ModelInfo.KIND_EMBEDDING}
DEFAULT_USAGE_DAYS = 30


# Chat.


def chat_call(request: pb.ChatRequest, api_key_id: str) -> ChatCall:
    """The domain call of a ChatRequest (validation is the engine's)."""
    return ChatCall(
        model=request.model,
        messages=messages_from_proto(request.messages),
        params=_params(request),
        conversation_id=request.conversation_id,
        cache_mode=_CACHE_MODES.get(request.cache_mode, CacheMode.DEFAULT),
        api_key_id=api_key_id,
        raw_params=struct_to_json(request.openai_parameters),
    )


def messages_from_proto(messages: Iterable[pb.ChatMessage]) -> list[Message]:
    """OpenAI-format messages."""
    return [_message(m) for m in messages]


def _message(message: pb.ChatMessage) -> Message:
    out: Message = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": c.type or "function",
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in message.tool_calls
        ]
    return out


def _params(request: pb.ChatRequest) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in ("temperature", "top_p", "max_tokens", "seed", "presence_penalty"):
        if request.HasField(name):
            params[name] = getattr(request, name)
    if request.HasField("frequency_penalty"):
        params["frequency_penalty"] = request.frequency_penalty
    if request.stop:
        params["stop"] = list(request.stop)
    if request.user:
        params["user"] = request.user
    if request.tools:
        params["tools"] = [_tool(t) for t in request.tools]
    if request.tool_choice:
        params["tool_choice"] = _tool_choice(request.tool_choice)
    if request.HasField("response_format"):
        response_format = _response_format(request.response_format)
        if response_format is not None:
            params["response_format"] = response_format
    return params


def _tool(tool: pb.Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.function.name}
    if tool.function.description:
        function["description"] = tool.function.description
    if tool.function.HasField("parameters"):
        function["parameters"] = struct_to_json(tool.function.parameters)
    if tool.function.strict:
        function["strict"] = True
    return {"type": tool.type or "function", "function": function}


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _response_format(value: pb.ResponseFormat) -> dict[str, Any] | None:
    kind = _FORMATS.get(value.type)
    if kind is None:
        return None
    if kind != "json_schema":
        return {"type": kind}
    schema: dict[str, Any] = {
        "name": value.schema_name or "response",
        "schema": struct_to_json(value.json_schema),
    }
    if value.strict:
        schema["strict"] = True
    return {"type": "json_schema", "json_schema": schema}


def completion_to_proto(completion: Completion) -> pb.ChatResponse:
    """The ChatResponse of a completion."""
    return pb.ChatResponse(
        id=completion.id,
        model=completion.model,
        provider=completion.provider,
        message=message_to_proto(completion.message),
        finish_reason=completion.finish_reason,
        usage=usage_to_proto(completion.usage),
        cached=completion.cached,
        conversation_id=completion.conversation_id,
        create_time=timestamp(completion.created),
    )


def message_to_proto(message: Message) -> pb.ChatMessage:
    """A ChatMessage of an OpenAI-format message."""
    return pb.ChatMessage(
        role=str(message.get("role", "assistant")),
        content=str(message.get("content") or ""),
        name=str(message.get("name") or ""),
        tool_call_id=str(message.get("tool_call_id") or ""),
        tool_calls=[
            pb.ToolCall(
                id=str(c.get("id") or ""),
                type=str(c.get("type") or "function"),
                function=pb.FunctionCall(
                    name=str(c.get("function", {}).get("name") or ""),
                    arguments=str(c.get("function", {}).get("arguments") or ""),
                ),
            )
            for c in message.get("tool_calls") or []
        ],
    )


def chunk_to_proto(chunk: Chunk) -> pb.StreamChatResponse:
    """The StreamChatResponse of a chunk."""
    reply = pb.StreamChatResponse(
        id=chunk.id,
        model=chunk.model,
        provider=chunk.provider,
        role=chunk.role,
        content=chunk.content,
        finish_reason=chunk.finish_reason,
        cached=chunk.cached,
        conversation_id=chunk.conversation_id,
        create_time=timestamp(chunk.created),
        tool_calls=[_tool_delta(d) for d in chunk.tool_calls],
    )
    if chunk.usage is not None:
        reply.usage.CopyFrom(usage_to_proto(chunk.usage))
    return reply


def _tool_delta(delta: Mapping[str, Any]) -> pb.ToolCallDelta:
    function = delta.get("function") or {}
    return pb.ToolCallDelta(
        index=int(delta.get("index") or 0),
        id=str(delta.get("id") or ""),
        type=str(delta.get("type") or ""),
        name=str(function.get("name") or ""),
        arguments=str(function.get("arguments") or ""),
    )


def usage_to_proto(usage: TokenUsage) -> pb.Usage:
    """Tokens and cost."""
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cost_usd=usage.cost_usd,
    )


# Models.


def model_id(model: Any) -> str:
    """The id of a model description (router's or local embedding models'): how it is listed."""
    return str(model.name)


def models_to_proto(models: Iterable[Any], next_page_token: str = "") -> pb.ListModelsResponse:
    """ListModels' reply from model descriptions, in the order given."""
    return pb.ListModelsResponse(
        next_page_token=next_page_token,
        models=[
            pb.ModelInfo(
                id=m.name,
                kind=_KINDS.get(m.kind, pb.ModelInfo.KIND_UNSPECIFIED),
                providers=list(m.providers),
                context_window=m.context_window,
                max_output_tokens=m.max_output_tokens,
                dimensions=m.dimensions,
            )
            for m in models
        ],
    )


# Embeddings and analysis.


def embeddings_to_proto(result: Embeddings) -> pb.EmbedResponse:
    """Embed's reply."""
    return pb.EmbedResponse(
        model=result.model,
        embeddings=[pb.Embedding(values=row.tolist()) for row in result.vectors],
        usage=usage_to_proto(result.usage),
        dimensions=result.dimensions,
    )


def sentiments_to_proto(results: Iterable[Any]) -> pb.AnalyzeSentimentResponse:
    """AnalyzeSentiment's reply."""
    return pb.AnalyzeSentimentResponse(
        results=[
            pb.Sentiment(
                label=r.label,
                compound=r.compound,
                positive=r.positive,
                neutral=r.neutral,
                negative=r.negative,
            )
            for r in results
        ]
    )


# Conversations.


def conversation_to_proto(record: ConversationRecord, *, messages: bool = True) -> pb.Conversation:
    """A Conversation (without its messages for listings)."""
    return pb.Conversation(
        id=record.id,
        model=record.model,
        messages=[message_to_proto(m) for m in record.messages] if messages else [],
        labels=record.labels,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        message_count=record.message_count,
    )


# Search.


def collection_to_proto(info: CollectionInfo) -> pb.Collection:
    """A Collection."""
    return pb.Collection(
        name=info.name,
        embedding_model=info.embedding_model,
        dimensions=info.dimensions,
        document_count=info.document_count,
        create_time=timestamp(info.create_time),
    )


def documents_from_proto(documents: Iterable[pb.Document]) -> list[Document]:
    """Documents to store."""
    return [
        Document(
            id=d.id,
            text=d.text,
            metadata=struct_to_dict(d.metadata) if d.HasField("metadata") else {},
        )
        for d in documents
    ]


def hit_to_proto(hit: Hit) -> pb.SearchHit:
    """A search hit."""
    document = pb.Document(id=hit.document.id, text=hit.document.text)
    if hit.document.metadata:
        document.metadata.CopyFrom(dict_to_struct(hit.document.metadata))
    return pb.SearchHit(document=document, score=hit.score)


# Usage and budgets.


def usage_total_to_proto(row: UsageTotalRow) -> pb.UsageTotal:
    """One row of usage totals."""
    return pb.UsageTotal(
        api_key_id=row.api_key_id,
        model=row.model,
        provider=row.provider,
        requests=row.requests,
        cached_requests=row.cached_requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost_usd=row.cost_usd,
        mean_latency_ms=row.mean_latency_ms,
    )


_PERIODS = {
    pb.BUDGET_PERIOD_UNSPECIFIED: BudgetPeriod.TOTAL,
    pb.BUDGET_PERIOD_DAILY: BudgetPeriod.DAILY,
    pb.BUDGET_PERIOD_MONTHLY: BudgetPeriod.MONTHLY,
}
_PERIODS_BACK = {v: k for k, v in _PERIODS.items()}


def budget_period(value: pb.BudgetPeriod.ValueType) -> BudgetPeriod:
    """The domain period of the proto enum."""
    return _PERIODS.get(value, BudgetPeriod.TOTAL)


def budget_to_proto(state: BudgetState) -> pb.Budget:
    """A Budget."""
    return pb.Budget(
        api_key_id=state.api_key_id,
        limit_usd=state.limit_usd,
        period=_PERIODS_BACK[state.period],
        spent_usd=state.spent_usd + state.reserved_usd,
        period_start=timestamp(state.period_start),
    )


# Shared.


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain JSON values (whole numbers stay floats, as JSON has no ints)."""
    return dict(json_format.MessageToDict(value))


def struct_to_json(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as the JSON values it was made of, numbers as floats; unlike `struct_to_dict`,
    it keeps infinite numbers (a JSON number too large for a double), for validation to refuse
    them by name."""
    return {key: _json_value(item) for key, item in value.fields.items()}


def _json_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_json(value.struct_value)
    if kind == "list_value":
        return [_json_value(item) for item in value.list_value.values]
    if kind == "null_value" or kind is None:
        return None
    return getattr(value, kind)


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """Plain JSON values as a Struct."""
    out = struct_pb2.Struct()
    out.update(json.loads(json.dumps(value)))
    return out


def timestamp(unix_s: float) -> Timestamp:
    """A Timestamp of a Unix time."""
    out = Timestamp()
    out.FromNanoseconds(int(unix_s * 1e9))
    return out


def day_range(request: Any, today: date | None = None) -> tuple[date, date]:
    """The UTC days a usage query covers (default: the last 30 days)."""
    end = _day(request.end_time) if request.HasField("end_time") else None
    end = end or today or datetime.now(UTC).date()
    start = _day(request.start_time) if request.HasField("start_time") else None
    return start or end - timedelta(days=DEFAULT_USAGE_DAYS - 1), end


def _day(value: Timestamp) -> date:
    return value.ToDatetime(tzinfo=UTC).date()
