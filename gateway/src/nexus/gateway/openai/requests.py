"""OpenAI request bodies translated into the llm service's messages (`nexus.api.llm.v1`).

This module translates; it judges nothing. Each parameter whose value a field of the request
message holds exactly (`temperature` a finite number, `tools` function tools of the right
shape, `messages` text messages) goes into that field; every other parameter (one without a
field, such as `reasoning_effort` or `stream`, one of the wrong type, one a field would hold
only approximately, an unknown name) travels as the client's JSON in the request's
`openai_parameters`. The llm service checks all of them against OpenAI's rules, in OpenAI's
order (an unknown model first), and its INVALID_ARGUMENT comes back as OpenAI's 400 with the
same `param` and `code` (`nexus.llm.validation`).

The only 400s of this module are for bodies that are not a JSON object, and values that cannot
travel at all (nesting deeper than protobuf takes).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.gateway.openai.errors import OpenAIError, invalid

ENCODING_FORMATS = ("float", "base64")
CACHE_HEADER = "X-Nexus-Cache"
MAX_EMBEDDING_INPUTS = 2048
MAX_DEPTH = 32
"""Deepest nesting of a JSON value that travels (protobuf refuses much deeper Structs)."""

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_MODES = ("none", "auto", "required")
_ROLES = ("system", "developer", "user", "assistant", "tool")
_FORMATS = {
    "text": pb.ResponseFormat.TYPE_TEXT,
    "json_object": pb.ResponseFormat.TYPE_JSON_OBJECT,
    "json_schema": pb.ResponseFormat.TYPE_JSON_SCHEMA,
}
_CACHE_MODES = {
    "default": pb.CACHE_MODE_UNSPECIFIED,
    "disabled": pb.CACHE_MODE_DISABLED,
    "refresh": pb.CACHE_MODE_REFRESH,
}


@dataclass(frozen=True)
class ChatCompletionCall:
    """A translated `POST /v1/chat/completions`.

    Attributes:
        request: The llm service's request.
        stream: Whether to answer with Server-Sent Events (`stream: true`).
        include_usage: Whether a stream ends with a usage chunk (`stream_options`).
    """

    request: pb.ChatRequest
    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True)
class EmbeddingCall:
    """A translated `POST /v1/embeddings`.

    Attributes:
        request: The llm service's request.
        encoding_format: "float" or "base64" (as the service accepted it).
    """

    request: pb.EmbedRequest
    encoding_format: str = "float"


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        OpenAIError: 400 when it is not JSON (NaN and Infinity are not JSON), or not an object.
    """
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise OpenAIError(
            400, "We could not parse the JSON body of your request: it is not valid JSON."
        ) from None
    if not isinstance(value, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def cache_mode(value: str | None) -> pb.CacheMode.ValueType:
    """The cache mode asked for with `X-Nexus-Cache: default|disabled|refresh`."""
    if value is None:
        return pb.CACHE_MODE_UNSPECIFIED
    mode = _CACHE_MODES.get(value.strip().lower())
    if mode is None:
        allowed = ", ".join(_CACHE_MODES)
        raise invalid(CACHE_HEADER, f"Invalid {CACHE_HEADER} {value!r}; one of: {allowed}.")
    return mode


# Chat.


def chat_completion_call(
    body: Mapping[str, Any], cache: pb.CacheMode.ValueType = pb.CACHE_MODE_UNSPECIFIED
) -> ChatCompletionCall:
    """The llm service's `ChatRequest` of a chat completion request.

    Args:
        body: The JSON body.
        cache: The cache mode (from the `X-Nexus-Cache` header).

    Raises:
        OpenAIError: 400 for a value that cannot travel.
    """
    request = pb.ChatRequest(cache_mode=cache)
    _fill(request, body, _CHAT_FIELDS, request.openai_parameters)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ChatCompletionCall(request, stream=stream, include_usage=stream and include_usage)


Fit = Callable[[Any, Any], bool]
"""Sets a field of the request from a parameter's value if the field holds it exactly."""


def _fill(request: Any, body: Mapping[str, Any], fields: Mapping[str, Fit], raw: Any) -> None:
    """Each parameter into its field, or as JSON into `raw` (`openai_parameters`)."""
    unfit = {name: value for name, value in body.items() if not _fits(fields, name, request, value)}
    for name, value in unfit.items():
        if _depth(value) > MAX_DEPTH:
            raise invalid(name, f"Invalid '{name}': nested more than {MAX_DEPTH} levels deep.")
        raw[name] = _travelling(value)


def _fits(fields: Mapping[str, Fit], name: str, request: Any, value: Any) -> bool:
    fit = fields.get(name)
    return fit is not None and fit(request, value)


def _string(name: str) -> Fit:
    def fit(request: Any, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        setattr(request, name, value)
        return True

    return fit


def _number(name: str) -> Fit:
    def fit(request: Any, value: Any) -> bool:
        if value is None:
            return True
        if not _is_number(value) or not math.isfinite(_travelling(value)):
            return False
        setattr(request, name, float(value))
        return True

    return fit


def _integer(name: str, bounds: tuple[int, int]) -> Fit:
    def fit(request: Any, value: Any) -> bool:
        if value is None:
            return True
        if not _is_integer(value) or not bounds[0] <= value <= bounds[1]:
            return False
        setattr(request, name, value)
        return True

    return fit


def _stop(request: Any, value: Any) -> bool:
    if value is None:
        return True
    stops = [value] if isinstance(value, str) else value
    if not _strings(stops) or not stops:
        return False
    request.stop.extend(stops)
    return True


def _each(name: str, convert: Callable[[Any], Any], *, non_empty: bool = False) -> Fit:
    """A list field whose every item `convert` takes as the request holds it (None: it cannot)."""

    def fit(request: Any, value: Any) -> bool:
        if not isinstance(value, list) or (non_empty and not value):
            return False
        items = [convert(item) for item in value]
        if any(item is None for item in items):
            return False
        getattr(request, name).extend(items)
        return True

    return fit


def _message(value: Any) -> pb.ChatMessage | None:
    """A text message, exactly as a ChatMessage holds it, or None."""
    if not isinstance(value, dict) or value.get("role") not in _ROLES:
        return None
    role = value["role"]
    keys = {"role", "content", "name"} | _MESSAGE_KEYS.get(role, set())
    content = _text(value.get("content"), role)
    name = value.get("name", "")
    if value.keys() - keys or content is None or not isinstance(name, str):
        return None
    message = pb.ChatMessage(role=role, content=content, name=name)
    if role == "tool":
        if not isinstance(value.get("tool_call_id"), str):
            return None
        message.tool_call_id = value["tool_call_id"]
    if role == "assistant":
        tool_calls = _tool_calls(value.get("tool_calls", []))
        if tool_calls is None:
            return None
        message.tool_calls.extend(tool_calls)
    return message


_MESSAGE_KEYS = {"assistant": {"tool_calls"}, "tool": {"tool_call_id"}}
_PART_TEXT = {"text": "text", "refusal": "refusal"}


def _text(content: Any, role: str) -> str | None:
    """A message's content as one string (text parts joined by newlines), or None."""
    if isinstance(content, str):
        return content
    if content is None:
        return "" if role == "assistant" else None
    if not isinstance(content, list) or not content:
        return None
    texts = []
    for part in content:
        kind = str(part.get("type")) if isinstance(part, dict) else ""
        key = _PART_TEXT.get(kind) if kind == "text" or role == "assistant" else None
        if key is None or part.keys() != {"type", key} or not isinstance(part[key], str):
            return None
        texts.append(part[key])
    return "\n".join(texts)


def _tool_calls(value: Any) -> list[pb.ToolCall] | None:
    if not isinstance(value, list):
        return None
    calls = []
    for call in value:
        if not isinstance(call, dict) or call.keys() != {"id", "type", "function"}:
            return None
        function = call["function"]
        if call["type"] != "function" or not isinstance(function, dict):
            return None
        if function.keys() != {"name", "arguments"}:
            return None
        if not _strings([call["id"], function["name"], function["arguments"]]):
            return None
        calls.append(
            pb.ToolCall(
                id=call["id"],
                type="function",
                function=pb.FunctionCall(name=function["name"], arguments=function["arguments"]),
            )
        )
    return calls


def _tool(value: Any) -> pb.Tool | None:
    if not isinstance(value, dict) or value.keys() != {"type", "function"}:
        return None
    function = value["function"]
    if value["type"] != "function" or not isinstance(function, dict):
        return None
    if function.keys() - {"name", "description", "parameters", "strict"}:
        return None
    name, description = function.get("name"), function.get("description", "")
    parameters, strict = function.get("parameters"), function.get("strict")
    if not _strings([name, description]) or not name or not _optional_boolean(strict):
        return None
    if parameters is not None and not _schema(parameters):
        return None
    definition = pb.FunctionDefinition(name=name, description=description, strict=bool(strict))
    if parameters is not None:
        definition.parameters.update(_travelling(parameters))
    return pb.Tool(type="function", function=definition)


def _tool_choice(request: Any, value: Any) -> bool:
    """A mode, or the name of the one function to call (one string holds either, so a function
    named like a mode travels as JSON)."""
    if value in _MODES:
        request.tool_choice = value
        return True
    if not isinstance(value, dict) or value.keys() != {"type", "function"}:
        return False
    function = value["function"]
    if value["type"] != "function" or not isinstance(function, dict) or function.keys() != {"name"}:
        return False
    name = function["name"]
    if not isinstance(name, str) or not name or name in _MODES:
        return False
    request.tool_choice = name
    return True


def _response_format(request: Any, value: Any) -> bool:
    if not isinstance(value, dict) or value.get("type") not in _FORMATS:
        return False
    kind = value["type"]
    if kind != "json_schema":
        if value.keys() != {"type"}:
            return False
        request.response_format.type = _FORMATS[kind]
        return True
    out = _json_schema_format(value)
    if out is None:
        return False
    request.response_format.CopyFrom(out)
    return True


def _json_schema_format(value: dict[str, Any]) -> pb.ResponseFormat | None:
    spec = value.get("json_schema")
    if value.keys() != {"type", "json_schema"} or not isinstance(spec, dict):
        return None
    if spec.keys() - {"name", "schema", "strict"}:
        return None
    name, schema, strict = spec.get("name"), spec.get("schema"), spec.get("strict")
    if not isinstance(name, str) or not name or not _optional_boolean(strict):
        return None
    if not _schema(schema) or not schema:
        return None
    out = pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA, schema_name=name)
    out.json_schema.update(_travelling(schema))
    out.strict = bool(strict)
    return out


_CHAT_FIELDS: dict[str, Fit] = {
    "model": _string("model"),
    "messages": _each("messages", _message, non_empty=True),
    "temperature": _number("temperature"),
    "top_p": _number("top_p"),
    "presence_penalty": _number("presence_penalty"),
    "frequency_penalty": _number("frequency_penalty"),
    "max_tokens": _integer("max_tokens", _INT32),
    "seed": _integer("seed", _INT64),
    "stop": _stop,
    "user": _string("user"),
    "tools": _each("tools", _tool),
    "tool_choice": _tool_choice,
    "response_format": _response_format,
}


# Embeddings.


def embedding_call(body: Mapping[str, Any]) -> EmbeddingCall:
    """The llm service's `EmbedRequest` of an embeddings request.

    Raises:
        OpenAIError: 400 for a value that cannot travel.
    """
    request = pb.EmbedRequest()
    _fill(request, body, _EMBEDDING_FIELDS, request.openai_parameters)
    encoding_format = body.get("encoding_format")
    if encoding_format not in ENCODING_FORMATS:  # the service refuses any other
        encoding_format = "float"
    return EmbeddingCall(request, encoding_format)


def _inputs(request: Any, value: Any) -> bool:
    """One text or up to MAX_EMBEDDING_INPUTS of them, none empty."""
    texts = [value] if isinstance(value, str) else value
    if not _strings(texts) or not 1 <= len(texts) <= MAX_EMBEDDING_INPUTS or not all(texts):
        return False
    request.inputs.extend(texts)
    return True


_EMBEDDING_FIELDS: dict[str, Fit] = {"model": _string("model"), "input": _inputs}


# Values.


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_boolean(value: Any) -> bool:
    return value is None or isinstance(value, bool)


def _schema(value: Any) -> bool:
    return isinstance(value, dict) and _depth(value) <= MAX_DEPTH


def _strings(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def _travelling(value: Any) -> Any:
    """A JSON value as a Struct value takes it: numbers as doubles, and an integer beyond 64
    bits (which no integer of OpenAI's holds, and a double would round into range) as an
    infinity of its sign: JSON has no infinities, so the service reads one as a number out of
    range and refuses it by name."""
    if isinstance(value, dict):
        return {key: _travelling(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_travelling(item) for item in value]
    if _is_integer(value) and not _INT64[0] <= value <= _INT64[1]:
        return math.inf if value > 0 else -math.inf
    return value


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in a JSON value (iteratively: no recursion limit)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item)
    return deepest
