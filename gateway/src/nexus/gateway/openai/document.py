"""The OpenAI-compatible paths in the gateway's OpenAPI document.

The schemas are the subset of OpenAI's (`CreateChatCompletionRequest`, ...) that Nexus serves,
under `openai.*` names beside the proto-generated ones: every parameter with the values Nexus
accepts (a value OpenAI has and Nexus refuses, as `n: 2`, is left out; an unknown parameter is
400, as with OpenAI); errors use OpenAI's `ErrorResponse`.
"""

from __future__ import annotations

from typing import Any

from nexus.gateway.openai.requests import CACHE_HEADER, MAX_EMBEDDING_INPUTS
from nexus.gateway.openai.responses import CACHED_HEADER, FINISH_REASONS
from nexus.gateway.openai.surface import CHAT_PATH, EMBEDDINGS_PATH, MODEL_PATH, MODELS_PATH
from nexus.gateway.openapi import IDEMPOTENCY_KEY_REF

# OpenAI's schema as its spec publishes it; the llm service enforces it (nexus.llm.validation).
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP = 4
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Schema = dict[str, Any]

SCOPE = "llm:invoke"
_ERROR_CODES = ("400", "401", "403", "404", "413", "414", "429", "431", "500", "503", "504")
_BODY_ERROR_CODES = ("415",)  # only where there is a body


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/openai.{name}"}


def _object(properties: Schema, *required: str, closed: bool = False) -> Schema:
    """An object schema; a `closed` one refuses other properties (the requests: OpenAI answers
    an unknown parameter with 400)."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _number(low: float, high: float) -> Schema:
    return {"type": ["number", "null"], "minimum": low, "maximum": high}


def _choice(*values: str) -> Schema:
    return {"type": ["string", "null"], "enum": [*values, None]}


_TEXT_PART = _object(
    {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}, "type", "text"
)
_TOOL_CALL = _object(
    {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["function"]},
        "function": _object(
            {"name": {"type": "string"}, "arguments": {"type": "string"}}, "name", "arguments"
        ),
    },
    "id",
    "type",
    "function",
)
_USAGE = _object(
    {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
)

SCHEMAS: dict[str, Schema] = {
    "openai.ChatMessage": _object(
        {
            "role": {"type": "string", "enum": list(ROLES)},
            "content": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": _TEXT_PART},
                    {"type": "null"},
                ]
            },
            "name": {"type": "string"},
            "tool_calls": {"type": "array", "items": _TOOL_CALL},
            "tool_call_id": {"type": "string"},
        },
        "role",
    ),
    "openai.CreateChatCompletionRequest": _object(
        {
            "model": {"type": "string"},
            "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
            "temperature": _number(0, 2),
            "top_p": _number(0, 1),
            "presence_penalty": _number(-2, 2),
            "frequency_penalty": _number(-2, 2),
            "n": {"type": ["integer", "null"], "enum": [1, None]},
            "logprobs": {"type": ["boolean", "null"], "enum": [False, None]},
            "top_logprobs": {"type": "null"},
            "stop": {
                "oneOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_STOP,
                        "items": {"type": "string"},
                    },
                    {"type": "null"},
                ]
            },
            "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": INT32_MAX},
            "max_completion_tokens": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": INT32_MAX,
            },
            "seed": {"type": ["integer", "null"], "minimum": INT64_MIN, "maximum": INT64_MAX},
            "logit_bias": {
                "type": ["object", "null"],
                "propertyNames": {"pattern": "^[0-9]{1,10}$"},
                "additionalProperties": {"type": "integer", "minimum": -100, "maximum": 100},
            },
            "parallel_tool_calls": {"type": "boolean"},
            "reasoning_effort": _choice("none", "minimal", "low", "medium", "high", "xhigh", "max"),
            "verbosity": _choice("low", "medium", "high"),
            "service_tier": _choice("auto", "default", "flex", "scale", "priority", "fast"),
            "modalities": {
                "type": ["array", "null"],
                "items": {"type": "string", "enum": ["text"]},
            },
            "metadata": {
                "type": ["object", "null"],
                "maxProperties": 16,
                "propertyNames": {"maxLength": 64},
                "additionalProperties": {"type": "string", "maxLength": 512},
            },
            "store": {"type": ["boolean", "null"], "enum": [False, None]},
            "safety_identifier": {"type": ["string", "null"], "maxLength": 64},
            "prompt_cache_key": {"type": ["string", "null"]},
            "prompt_cache_retention": _choice("in_memory", "24h"),
            "prediction": {
                "type": ["object", "null"],
                "properties": {
                    "type": {"type": "string", "enum": ["content"]},
                    "content": {
                        "oneOf": [
                            {"type": "string"},
                            {"type": "array", "minItems": 1, "items": _TEXT_PART},
                        ]
                    },
                },
                "required": ["type", "content"],
            },
            "web_search_options": {"type": "object", "additionalProperties": True},
            "response_format": _object(
                {
                    "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                    "json_schema": _object(
                        {
                            "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                            "schema": {"type": "object", "additionalProperties": True},
                            "strict": {"type": ["boolean", "null"]},
                        },
                        "name",
                    ),
                },
                "type",
            ),
            "tools": {
                "type": "array",
                "items": _object(
                    {
                        "type": {"type": "string", "enum": ["function"]},
                        "function": _object(
                            {
                                "name": {"type": "string"},
                                "description": {"type": "string"},
                                "parameters": {"type": "object", "additionalProperties": True},
                                "strict": {"type": ["boolean", "null"]},
                            },
                            "name",
                        ),
                    },
                    "type",
                    "function",
                ),
            },
            "tool_choice": {
                "oneOf": [
                    {"type": "string", "enum": ["none", "auto", "required"]},
                    _object(
                        {
                            "type": {"type": "string", "enum": ["function"]},
                            "function": _object({"name": {"type": "string"}}, "name"),
                        },
                        "type",
                        "function",
                    ),
                ]
            },
            "user": {"type": "string"},
            "stream": {"type": ["boolean", "null"]},
            "stream_options": {
                "type": ["object", "null"],
                "properties": {
                    "include_usage": {"type": "boolean"},
                    "include_obfuscation": {"type": "boolean"},
                },
            },
        },
        "model",
        "messages",
        closed=True,
    ),
    "openai.CreateChatCompletionResponse": _object(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": _object(
                    {
                        "index": {"type": "integer"},
                        "message": _object(
                            {
                                "role": {"type": "string", "enum": ["assistant"]},
                                "content": {"type": ["string", "null"]},
                                "refusal": {"type": "null"},
                                "tool_calls": {"type": "array", "items": _TOOL_CALL},
                            },
                            "role",
                            "content",
                        ),
                        "logprobs": {"type": "null"},
                        "finish_reason": {"type": "string", "enum": list(FINISH_REASONS)},
                    },
                    "index",
                    "message",
                    "finish_reason",
                ),
            },
            "usage": _USAGE,
        },
        "id",
        "object",
        "created",
        "model",
        "choices",
    ),
    "openai.CreateChatCompletionStreamResponse": _object(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion.chunk"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": _object(
                    {
                        "index": {"type": "integer"},
                        "delta": _object(
                            {
                                "role": {"type": "string"},
                                "content": {"type": "string"},
                                "tool_calls": {"type": "array", "items": {"type": "object"}},
                            }
                        ),
                        "finish_reason": {"type": ["string", "null"]},
                    },
                    "index",
                    "delta",
                    "finish_reason",
                ),
            },
            "usage": {"oneOf": [_USAGE, {"type": "null"}]},
        },
        "id",
        "object",
        "created",
        "model",
        "choices",
    ),
    "openai.CreateEmbeddingRequest": _object(
        {
            "model": {"type": "string"},
            "input": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_EMBEDDING_INPUTS,
                        "items": {"type": "string", "minLength": 1},
                    },
                ]
            },
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": {
                "type": "integer",
                "minimum": 1,
                "description": "Only the model's own vector length.",
            },
            "user": {"type": "string"},
        },
        "model",
        "input",
        closed=True,
    ),
    "openai.CreateEmbeddingResponse": _object(
        {
            "object": {"type": "string", "enum": ["list"]},
            "model": {"type": "string"},
            "data": {
                "type": "array",
                "items": _object(
                    {
                        "object": {"type": "string", "enum": ["embedding"]},
                        "index": {"type": "integer"},
                        "embedding": {
                            "oneOf": [
                                {"type": "array", "items": {"type": "number"}},
                                {"type": "string", "contentEncoding": "base64"},
                            ]
                        },
                    },
                    "object",
                    "index",
                    "embedding",
                ),
            },
            "usage": _object(
                {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
                "prompt_tokens",
                "total_tokens",
            ),
        },
        "object",
        "model",
        "data",
        "usage",
    ),
    "openai.Model": _object(
        {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
            "kind": {"type": "string", "enum": ["chat", "embedding", "unknown"]},
            "providers": {"type": "array", "items": {"type": "string"}},
            "context_window": {"type": "integer"},
            "max_output_tokens": {"type": "integer"},
            "dimensions": {"type": "integer"},
        },
        "id",
        "object",
        "created",
        "owned_by",
    ),
    "openai.ListModelsResponse": _object(
        {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("Model")},
        },
        "object",
        "data",
    ),
    "openai.ErrorResponse": _object(
        {
            "error": _object(
                {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
                "message",
                "type",
                "param",
                "code",
            )
        },
        "error",
    ),
}

_CACHED = {
    CACHED_HEADER: {
        "description": "Whether the completion was served from the response cache.",
        "schema": {"type": "string", "enum": ["true", "false"]},
    }
}


def _operation(operation_id: str, summary: str, ok: Schema, *, body: str | None = None) -> Schema:
    """An operation; one with a `body` (a schema name) takes it and an `Idempotency-Key`
    (forwarded: the llm service runs a unary Chat or Embed with a key once, ADR 0019)."""
    codes = sorted(_ERROR_CODES + (_BODY_ERROR_CODES if body else ()))
    errors = {code: {"$ref": "#/components/responses/openai.Error"} for code in codes}
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["openai"],
        "description": f"OpenAI-compatible. Needs an API key with the scope `{SCOPE}`.",
        "x-nexus-scope": SCOPE,
        "parameters": [IDEMPOTENCY_KEY_REF] if body else [],
        "responses": {"200": ok, **errors},
    }
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return operation


def _chat() -> Schema:
    operation = _operation(
        "OpenAI_CreateChatCompletion",
        "Chat completion (OpenAI's API)",
        {
            "description": (
                "A chat completion; with `stream: true`, Server-Sent Events of "
                "`chat.completion.chunk` objects ending with `data: [DONE]`."
            ),
            "headers": _CACHED,
            "content": {
                "application/json": {"schema": _ref("CreateChatCompletionResponse")},
                "text/event-stream": {
                    # Before Open API 3.2, an event stream's schema describes one event.
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {
                            "data": {
                                "type": "string",
                                "description": "JSON of a chunk (x-event-schema) or of an "
                                "ErrorResponse, or `[DONE]` at the end.",
                                "x-event-schema": _ref("CreateChatCompletionStreamResponse"),
                            }
                        },
                    }
                },
            },
        },
        body="CreateChatCompletionRequest",
    )
    operation["parameters"].append(
        {
            "name": CACHE_HEADER,
            "in": "header",
            "required": False,
            "description": "Response-cache use for this request.",
            "schema": {"type": "string", "enum": ["default", "disabled", "refresh"]},
        }
    )
    return operation


def _embeddings() -> Schema:
    return _operation(
        "OpenAI_CreateEmbedding",
        "Embeddings (OpenAI's API)",
        {
            "description": "The embeddings.",
            "content": {"application/json": {"schema": _ref("CreateEmbeddingResponse")}},
        },
        body="CreateEmbeddingRequest",
    )


def _models() -> Schema:
    return _operation(
        "OpenAI_ListModels",
        "Models (OpenAI's API)",
        {
            "description": "The chat and embedding models.",
            "content": {"application/json": {"schema": _ref("ListModelsResponse")}},
        },
    )


def _model() -> Schema:
    operation = _operation(
        "OpenAI_RetrieveModel",
        "One model (OpenAI's API)",
        {"description": "The model.", "content": {"application/json": {"schema": _ref("Model")}}},
    )
    operation["parameters"] = [
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    return operation


def add_openai(document: dict[str, Any]) -> None:
    """Adds the OpenAI-compatible paths, schemas and error response to an OpenAPI document
    built by `nexus.gateway.openapi.build_openapi`."""
    document["paths"].update(
        {
            CHAT_PATH: {"post": _chat()},
            EMBEDDINGS_PATH: {"post": _embeddings()},
            MODELS_PATH: {"get": _models()},
            MODEL_PATH: {"get": _model()},
        }
    )
    components = document["components"]
    components["schemas"] = dict(sorted({**components["schemas"], **SCHEMAS}.items()))
    components["responses"]["openai.Error"] = {
        "description": "An error, in OpenAI's error body.",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before retrying (429).",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
        "content": {"application/json": {"schema": _ref("ErrorResponse")}},
    }
