"""OpenAI's request schemas, written as JSON Schema: the shape, type, range, size and values of
every parameter of `POST /v1/chat/completions` and `POST /v1/embeddings`.

They follow OpenAI's published OpenAPI document (`CreateChatCompletionRequest`,
`CreateEmbeddingRequest`), including the limits it states only in prose (metadata: 16 pairs,
keys of at most 64 characters, values of at most 512; logit_bias: token ids to -100..100).
Nullable means what it means there: `null` is allowed only where OpenAI allows it.
What Nexus adds or refuses on top (its own limits, unsupported features) is in the modules
that use these schemas, not here. The integration test `tests/integration/test_openai_spec.py`
checks these schemas against the document itself.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

STRING: Schema = {"type": "string"}
BOOLEAN_OR_NULL: Schema = {"type": ["boolean", "null"]}
OBJECT: Schema = {"type": "object"}


def _when(key: str, value: str, then: Schema) -> Schema:
    """`then` applies to an object whose `key` is `value` (a discriminated union's branch)."""
    return {"if": {"properties": {key: {"const": value}}, "required": [key]}, "then": then}


def _union(key: str, branches: dict[str, Schema], *also: str, **common: Schema) -> Schema:
    """An object discriminated by `key` (one of `branches`' keys), then that branch's rules;
    `also` are further required keys and `common` the properties every branch has."""
    return {
        "type": "object",
        "required": [key, *also],
        "properties": {key: {"enum": list(branches)}, **common},
        "allOf": [_when(key, value, then) for value, then in branches.items()],
    }


def _object(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


# Messages.

TEXT_PART = _object(["type", "text"], type={"const": "text"}, text=STRING)
TEXT_CONTENT: Schema = {"type": ["string", "array"], "minItems": 1, "items": TEXT_PART}
USER_PART = _union(
    "type",
    {
        "text": _object(["text"], text=STRING),
        "image_url": _object(
            ["image_url"],
            image_url=_object(["url"], url=STRING, detail={"enum": ["auto", "low", "high"]}),
        ),
        "input_audio": _object(
            ["input_audio"],
            input_audio=_object(["data", "format"], data=STRING, format={"enum": ["wav", "mp3"]}),
        ),
        "file": _object(
            ["file"], file=_object([], filename=STRING, file_data=STRING, file_id=STRING)
        ),
    },
)
ASSISTANT_PART = _union(
    "type",
    {"text": _object(["text"], text=STRING), "refusal": _object(["refusal"], refusal=STRING)},
)
TOOL_CALL = _union(
    "type",
    {
        "function": _object(
            ["function"], function=_object(["name", "arguments"], name=STRING, arguments=STRING)
        ),
        "custom": _object(["custom"], custom=_object(["name", "input"], name=STRING, input=STRING)),
    },
    "id",
    id=STRING,
)
MESSAGE = _union(
    "role",
    {
        "developer": _object(["content"], content=TEXT_CONTENT, name=STRING),
        "system": _object(["content"], content=TEXT_CONTENT, name=STRING),
        "user": _object(
            ["content"],
            content={"type": ["string", "array"], "minItems": 1, "items": USER_PART},
            name=STRING,
        ),
        "assistant": _object(
            [],
            content={"type": ["string", "array", "null"], "minItems": 1, "items": ASSISTANT_PART},
            refusal={"type": ["string", "null"]},
            name=STRING,
            audio={"type": ["object", "null"], "required": ["id"], "properties": {"id": STRING}},
            tool_calls={"type": "array", "items": TOOL_CALL},
            function_call={
                "type": ["object", "null"],
                "required": ["arguments", "name"],
                "properties": {"arguments": STRING, "name": STRING},
            },
        ),
        "tool": _object(["content", "tool_call_id"], content=TEXT_CONTENT, tool_call_id=STRING),
        "function": _object(["content", "name"], content={"type": ["string", "null"]}, name=STRING),
    },
)

# Tools and formats.

FUNCTION = _object(
    ["name"], name=STRING, description=STRING, parameters=OBJECT, strict=BOOLEAN_OR_NULL
)
_GRAMMAR = _object(["definition", "syntax"], definition=STRING, syntax={"enum": ["lark", "regex"]})
CUSTOM_FORMAT = _union(
    "type",
    {
        "text": {"additionalProperties": False, "properties": {"type": {}}},
        "grammar": {
            "required": ["grammar"],
            "additionalProperties": False,
            "properties": {"type": {}, "grammar": _GRAMMAR},
        },
    },
)
TOOL = _union(
    "type",
    {
        "function": _object(["function"], function=FUNCTION),
        "custom": _object(
            ["custom"],
            custom=_object(["name"], name=STRING, description=STRING, format=CUSTOM_FORMAT),
        ),
    },
)
_NAMED = _object(["name"], name=STRING)
TOOL_CHOICE: Schema = {
    "type": ["string", "object"],
    "if": {"type": "string"},
    "then": {"enum": ["none", "auto", "required"]},
    "else": _union(
        "type",
        {
            "function": _object(["function"], function=_NAMED),
            "custom": _object(["custom"], custom=_NAMED),
            "allowed_tools": _object(
                ["allowed_tools"],
                allowed_tools=_object(
                    ["mode", "tools"],
                    mode={"enum": ["auto", "required"]},
                    tools={"type": "array", "items": OBJECT},
                ),
            ),
        },
    ),
}
RESPONSE_FORMAT = _union(
    "type",
    {
        "text": {},
        "json_object": {},
        "json_schema": _object(
            ["json_schema"],
            json_schema=_object(
                ["name"], name=STRING, description=STRING, schema=OBJECT, strict=BOOLEAN_OR_NULL
            ),
        ),
    },
)


def _number(low: float, high: float) -> Schema:
    return {"type": ["number", "null"], "minimum": low, "maximum": high}


def _integer(low: int, high: int | None = None) -> Schema:
    schema: Schema = {"type": ["integer", "null"], "minimum": low}
    return schema if high is None else {**schema, "maximum": high}


def _choice(*values: str) -> Schema:
    return {"enum": [*values, None]}


_MODERATION_CONFIG: Schema = {
    "type": ["object", "null"],
    "required": ["mode"],
    "properties": {"mode": {"enum": ["score", "block"]}},
}

CHAT_PARAMETERS: dict[str, Schema] = {
    "model": STRING,
    "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "presence_penalty": _number(-2, 2),
    "frequency_penalty": _number(-2, 2),
    # OpenAI's schema bounds neither; it refuses 0, and no request message holds more than int32.
    "max_tokens": _integer(1, INT32_MAX),
    "max_completion_tokens": _integer(1, INT32_MAX),
    "seed": _integer(INT64_MIN, INT64_MAX),
    "stop": {"type": ["string", "array", "null"], "minItems": 1, "maxItems": 4, "items": STRING},
    "n": _integer(1, 128),
    "logprobs": BOOLEAN_OR_NULL,
    "top_logprobs": _integer(0, 20),
    "logit_bias": {
        "type": ["object", "null"],
        "propertyNames": {"pattern": "^[0-9]{1,10}$"},
        "additionalProperties": {"type": "integer", "minimum": -100, "maximum": 100},
    },
    "response_format": RESPONSE_FORMAT,
    "tools": {"type": "array", "items": TOOL},
    "tool_choice": TOOL_CHOICE,
    "parallel_tool_calls": {"type": "boolean"},
    "functions": {
        "type": "array",
        "minItems": 1,
        "maxItems": 128,
        "items": _object(["name"], name=STRING, description=STRING, parameters=OBJECT),
    },
    "function_call": {
        "type": ["string", "object"],
        "if": {"type": "string"},
        "then": {"enum": ["none", "auto"]},
        "else": _NAMED,
    },
    "user": STRING,
    "safety_identifier": {"type": ["string", "null"], "maxLength": 64},
    "prompt_cache_key": {"type": ["string", "null"]},
    "prompt_cache_retention": _choice("in_memory", "24h"),
    "prompt_cache_options": _object(
        [], ttl={"enum": ["30m"]}, mode={"enum": ["implicit", "explicit"]}
    ),
    "metadata": {
        "type": ["object", "null"],
        "maxProperties": 16,
        "propertyNames": {"maxLength": 64},
        "additionalProperties": {"type": "string", "maxLength": 512},
    },
    "store": BOOLEAN_OR_NULL,
    "service_tier": _choice("auto", "default", "flex", "scale", "priority", "fast"),
    "reasoning_effort": _choice("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "verbosity": _choice("low", "medium", "high"),
    "modalities": {"type": ["array", "null"], "items": {"enum": ["text", "audio"]}},
    "audio": {
        "type": ["object", "null"],
        "required": ["voice", "format"],
        "properties": {
            "voice": {
                "type": ["string", "object"],
                "if": {"type": "object"},
                "then": {
                    "required": ["id"],
                    "additionalProperties": False,
                    "properties": {"id": STRING},
                },
            },
            "format": {"enum": ["wav", "aac", "mp3", "flac", "opus", "pcm16"]},
        },
    },
    "prediction": {
        "type": ["object", "null"],
        "required": ["type", "content"],
        "properties": {"type": {"const": "content"}, "content": TEXT_CONTENT},
    },
    "web_search_options": _object(
        [],
        user_location={
            "type": ["object", "null"],
            "required": ["type", "approximate"],
            "properties": {
                "type": {"const": "approximate"},
                "approximate": _object(
                    [], country=STRING, region=STRING, city=STRING, timezone=STRING
                ),
            },
        },
        search_context_size={"enum": ["low", "medium", "high"]},
    ),
    "moderation": {
        "type": ["object", "null"],
        "required": ["model"],
        "properties": {
            "model": STRING,
            "policy": {
                "type": ["object", "null"],
                "properties": {"input": _MODERATION_CONFIG, "output": _MODERATION_CONFIG},
            },
        },
    },
    "stream": BOOLEAN_OR_NULL,
    "stream_options": {
        "type": ["object", "null"],
        "properties": {
            "include_usage": {"type": "boolean"},
            "include_obfuscation": {"type": "boolean"},
        },
    },
}
"""Every parameter of OpenAI's chat completion request; any other name is refused."""

EMBEDDING_PARAMETERS: dict[str, Schema] = {
    "model": STRING,
    # A text, texts, or tokens (an array of integers, or arrays of them); one kind per request.
    "input": {
        "type": ["string", "array"],
        "minItems": 1,
        "maxItems": 2048,
        "items": {
            "type": ["string", "integer", "array"],
            "minItems": 1,
            "items": {"type": "integer"},
        },
    },
    "encoding_format": {"enum": ["float", "base64"]},
    "dimensions": {"type": "integer", "minimum": 1},
    "user": STRING,
}
"""Every parameter of OpenAI's embeddings request (it allows no other)."""
