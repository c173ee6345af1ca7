"""OpenAI request bodies translated into the llm service's messages (`nexus.api.llm.v1`).

This module translates; it does not hold the chat rules. It checks only what translation needs:
JSON types, required fields, what the request message can carry (int32/int64 bounds, one of
the known response format types), and parameters of OpenAI's that Nexus does not serve (n > 1,
image parts, logprobs, legacy functions), which are refused rather than silently dropped. Roles,
ranges, stop sequences, names, tools and tool_choice are the llm service's to check
(`nexus.llm.validation`); its INVALID_ARGUMENT comes back as OpenAI's 400 with the same `param`.
Each check here raises `OpenAIError` (400) naming the parameter at fault. Fields this module does
not know are ignored, as OpenAI clients send some (`store`, `metadata`, `parallel_tool_calls`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.gateway.openai.errors import OpenAIError, invalid, unsupported

TOOL_CHOICES = ("none", "auto", "required")
ENCODING_FORMATS = ("float", "base64")
CACHE_HEADER = "X-Nexus-Cache"
MAX_EMBEDDING_INPUTS = 2048
MAX_SCHEMA_DEPTH = 32
"""Deepest nesting of a JSON schema or tool parameters (protobuf refuses deeper Structs)."""

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UNSUPPORTED_PARTS = ("image_url", "input_audio", "file")
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
    """A validated `POST /v1/chat/completions`.

    Attributes:
        request: The llm service's request.
        stream: Whether to answer with Server-Sent Events.
        include_usage: Whether a stream ends with a usage chunk (`stream_options`).
    """

    request: pb.ChatRequest
    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True)
class EmbeddingCall:
    """A validated `POST /v1/embeddings`.

    Attributes:
        request: The llm service's request.
        encoding_format: "float" or "base64".
        dimensions: The vector length asked for, if any (only the model's own is served).
    """

    request: pb.EmbedRequest
    encoding_format: str = "float"
    dimensions: int | None = None


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        OpenAIError: 400 when it is not JSON, or not an object.
    """
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise OpenAIError(
            400, "We could not parse the JSON body of your request: it is not valid JSON."
        ) from None
    if not isinstance(value, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    return value


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
    """Validates a chat completion request and builds the llm service's `ChatRequest`.

    Args:
        body: The JSON body.
        cache: The cache mode (from the `X-Nexus-Cache` header).

    Raises:
        OpenAIError: 400 naming the first bad parameter.
    """
    request = pb.ChatRequest(
        model=_model(body), messages=_messages(body.get("messages")), cache_mode=cache
    )
    _refuse_unsupported(body)
    _sampling(body, request)
    request.stop.extend(_stop(body.get("stop")))
    if (response_format := _response_format(body.get("response_format"))) is not None:
        request.response_format.CopyFrom(response_format)
    tools = _tools(body.get("tools"))
    request.tools.extend(tools)
    request.tool_choice = _tool_choice(body.get("tool_choice"))
    request.user = _string(body, "user") or ""
    stream, include_usage = _stream(body)
    return ChatCompletionCall(request, stream=stream, include_usage=include_usage)


def _model(body: Mapping[str, Any]) -> str:
    model = _string(body, "model")
    if not model:
        raise invalid("model", "You must provide a model parameter.", "missing_required_parameter")
    return model


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Parameters whose effect Nexus cannot give: refused, so that nobody relies on them."""
    n = _integer(body, "n", 1, 128)
    if n is not None and n != 1:
        raise unsupported("n", "Only n=1 is supported: ask for one choice per request.")
    if body.get("logprobs"):
        raise unsupported("logprobs", "logprobs are not supported.")
    for legacy in ("functions", "function_call"):
        if body.get(legacy) is not None:
            raise unsupported(legacy, f"'{legacy}' is deprecated and not supported; use 'tools'.")


def _sampling(body: Mapping[str, Any], request: pb.ChatRequest) -> None:
    """temperature, top_p, penalties, max tokens and seed (their ranges are the service's)."""
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        if (value := _number(body, name)) is not None:
            setattr(request, name, value)
    max_tokens = _integer(body, "max_tokens", _INT32_MIN, _INT32_MAX)
    max_completion_tokens = _integer(body, "max_completion_tokens", _INT32_MIN, _INT32_MAX)
    most = max_tokens if max_completion_tokens is None else max_completion_tokens
    if most is not None:
        request.max_tokens = most
    if (seed := _integer(body, "seed", _INT64_MIN, _INT64_MAX)) is not None:
        request.seed = seed


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = bool(_boolean(body, "stream"))
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        raise invalid("stream_options", message)
    options = _object(options, "stream_options")
    return True, bool(_boolean(options, "include_usage", "stream_options."))


def _messages(value: Any) -> list[pb.ChatMessage]:
    if value is None:
        raise invalid(
            "messages", "Missing required parameter: 'messages'.", "missing_required_parameter"
        )
    items = _array(value, "messages")
    if not items:
        raise invalid("messages", "'messages' must contain at least one message.", "empty_array")
    return [_message(m, f"messages[{i}]") for i, m in enumerate(items)]


def _message(value: Any, param: str) -> pb.ChatMessage:
    message = _object(value, param)
    role = _required_string(message, "role", f"{param}.")
    if role == "function":
        raise unsupported(f"{param}.role", "'function' messages are not supported; use tools.")
    tool_calls = _tool_calls(message.get("tool_calls"), param) if role == "assistant" else []
    out = pb.ChatMessage(
        role=role,
        content=_content(message.get("content"), f"{param}.content", role, not tool_calls),
        name=_string(message, "name", f"{param}.") or "",
        tool_calls=tool_calls,
    )
    if role == "tool":
        out.tool_call_id = _string(message, "tool_call_id", f"{param}.") or ""
        if not out.tool_call_id:
            raise invalid(
                f"{param}.tool_call_id",
                f"Missing required parameter: '{param}.tool_call_id'.",
                "missing_required_parameter",
            )
    return out


def _content(value: Any, param: str, role: str, required: bool) -> str:
    """The text of a message: a string, or text parts joined by newlines."""
    if value is None:
        if required:
            raise invalid(
                param, f"Missing required parameter: '{param}'.", "missing_required_parameter"
            )
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_text_part(p, f"{param}[{j}]", role) for j, p in enumerate(value))
    raise _wrong_type(param, "a string or an array of content parts", value)


def _text_part(value: Any, param: str, role: str) -> str:
    part = _object(value, param)
    kind = part.get("type")
    if kind == "text" or (kind == "refusal" and role == "assistant"):
        text = part.get(kind)
        if not isinstance(text, str):
            raise _wrong_type(f"{param}.{kind}", "a string", text)
        return text
    if kind in _UNSUPPORTED_PARTS:
        raise unsupported(f"{param}.type", f"Content parts of type '{kind}' are not supported.")
    raise invalid(f"{param}.type", f"Invalid value: {kind!r}. Supported values are: 'text'.")


def _tool_calls(value: Any, param: str) -> list[pb.ToolCall]:
    if value is None:
        return []
    calls = []
    for i, item in enumerate(_array(value, f"{param}.tool_calls")):
        where = f"{param}.tool_calls[{i}]"
        call = _object(item, where)
        if call.get("type", "function") != "function":
            raise invalid(f"{where}.type", "Only tool calls of type 'function' are supported.")
        function = _object(call.get("function"), f"{where}.function")
        calls.append(
            pb.ToolCall(
                id=_required_string(call, "id", f"{where}."),
                type="function",
                function=pb.FunctionCall(
                    name=_required_string(function, "name", f"{where}.function."),
                    arguments=_string(function, "arguments", f"{where}.function.") or "",
                ),
            )
        )
    return calls


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    items = _array(value, "stop")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _wrong_type(f"stop[{i}]", "a string", item)
    return list(items)


def _response_format(value: Any) -> pb.ResponseFormat | None:
    if value is None:
        return None
    spec = _object(value, "response_format")
    kind = spec.get("type")
    if kind not in _FORMATS:
        allowed = ", ".join(f"'{k}'" for k in _FORMATS)
        raise invalid(
            "response_format.type", f"Invalid value: {kind!r}. Supported values are: {allowed}."
        )
    out = pb.ResponseFormat(type=_FORMATS[kind])
    if kind != "json_schema":
        return out
    schema = _object(spec.get("json_schema"), "response_format.json_schema")
    out.schema_name = _required_string(schema, "name", "response_format.json_schema.")
    if schema.get("schema") is not None:
        out.json_schema.CopyFrom(_struct(schema["schema"], "response_format.json_schema.schema"))
    out.strict = bool(_boolean(schema, "strict", "response_format.json_schema."))
    return out


def _tools(value: Any) -> list[pb.Tool]:
    if value is None:
        return []
    tools = []
    for i, item in enumerate(_array(value, "tools")):
        tool = _object(item, f"tools[{i}]")
        if tool.get("type") != "function":
            raise unsupported(f"tools[{i}].type", "Only tools of type 'function' are supported.")
        function = _object(tool.get("function"), f"tools[{i}].function")
        prefix = f"tools[{i}].function."
        definition = pb.FunctionDefinition(
            name=_required_string(function, "name", prefix),
            description=_string(function, "description", prefix) or "",
            strict=bool(_boolean(function, "strict", prefix)),
        )
        if function.get("parameters") is not None:
            definition.parameters.CopyFrom(_struct(function["parameters"], f"{prefix}parameters"))
        tools.append(pb.Tool(type="function", function=definition))
    return tools


def _tool_choice(value: Any) -> str:
    """ "none", "auto", "required", or the name of the one function to call (the request's
    `tool_choice` holds either in one string)."""
    if value is None or isinstance(value, str):
        return value or ""
    spec = _object(value, "tool_choice")
    if spec.get("type") != "function":
        raise invalid("tool_choice.type", "Only the 'function' tool choice is supported.")
    function = _object(spec.get("function"), "tool_choice.function")
    choice = _required_string(function, "name", "tool_choice.function.")
    if choice in TOOL_CHOICES:  # one string could not tell the function from the mode
        raise unsupported("tool_choice", f"A function named '{choice}' cannot be chosen.")
    return choice


# Embeddings.


def embedding_call(body: Mapping[str, Any]) -> EmbeddingCall:
    """Validates an embeddings request and builds the llm service's `EmbedRequest`.

    Raises:
        OpenAIError: 400 naming the first bad parameter.
    """
    request = pb.EmbedRequest(model=_model(body), inputs=_inputs(body.get("input")))
    encoding_format = _string(body, "encoding_format") or "float"
    if encoding_format not in ENCODING_FORMATS:
        raise invalid(
            "encoding_format",
            f"Invalid value: {encoding_format!r}. Supported values are: 'float', 'base64'.",
        )
    dimensions = _integer(body, "dimensions", 1, _INT32_MAX)
    _string(body, "user")
    return EmbeddingCall(request, encoding_format=encoding_format, dimensions=dimensions)


def _inputs(value: Any) -> list[str]:
    if value is None:
        raise invalid("input", "Missing required parameter: 'input'.", "missing_required_parameter")
    items = [value] if isinstance(value, str) else _array(value, "input")
    if not items:
        raise invalid("input", "'input' must hold at least one text.", "empty_array")
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise invalid(
            "input", f"'input' may hold at most {MAX_EMBEDDING_INPUTS} texts, not {len(items)}."
        )
    for i, item in enumerate(items):
        if isinstance(item, int | list) and not isinstance(item, bool):
            raise unsupported("input", "Token arrays are not supported: send text.")
        param = "input" if isinstance(value, str) else f"input[{i}]"
        if not isinstance(item, str):
            raise _wrong_type(param, "a string", item)
        if not item:
            raise invalid(param, "Texts to embed must not be empty.")
    return list(items)


# Values.


def _string(body: Mapping[str, Any], name: str, prefix: str = "") -> str | None:
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    raise _wrong_type(f"{prefix}{name}", "a string", value)


def _required_string(body: Mapping[str, Any], name: str, prefix: str = "") -> str:
    value = _string(body, name, prefix)
    if not value:
        raise invalid(
            f"{prefix}{name}",
            f"Missing required parameter: '{prefix}{name}'.",
            "missing_required_parameter",
        )
    return value


def _boolean(body: Mapping[str, Any], name: str, prefix: str = "") -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise _wrong_type(f"{prefix}{name}", "a boolean", value)


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(name, "a number", value)
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise invalid(name, f"Invalid '{name}': the number is out of range.") from None


def _integer(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(name, "an integer", value)
    if not low <= value <= high:
        bound = f"at least {low}" if value < low else f"at most {high}"
        raise invalid(name, f"Invalid '{name}': {value}; it must be {bound}.")
    return value


def _object(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    raise _wrong_type(param, "an object", value)


def _array(value: Any, param: str) -> list[Any]:
    if isinstance(value, list):
        return value
    raise _wrong_type(param, "an array", value)


def _struct(value: Any, param: str) -> struct_pb2.Struct:
    """A JSON object (a schema) as a Struct, at most MAX_SCHEMA_DEPTH deep."""
    _object(value, param)
    if _depth(value) > MAX_SCHEMA_DEPTH:
        raise invalid(param, f"'{param}' is nested more than {MAX_SCHEMA_DEPTH} levels deep.")
    out = struct_pb2.Struct()
    out.update(value)
    return out


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


def _wrong_type(param: str, expected: str, value: Any) -> OpenAIError:
    message = f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)}."
    return invalid(param, message, "invalid_type")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
