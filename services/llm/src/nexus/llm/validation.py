"""Checks of a chat call before it costs anything: messages, parameters and sizes.

This is the one place where the chat rules live (roles, ranges, stop sequences, tools and
tool_choice, response formats, names): the native API and the gateway's OpenAI surface, which
only translates JSON to the request message, both reach them. Field paths name the request's
fields as clients wrote them (`messages[2].role`, `temperature`), so that an HTTP client sees
which one was wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from nexus.common.errors import InvalidArgument, ResourceExhausted
from nexus.llm.settings import LlmSettings
from nexus.llm.types import ChatCall, Message

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
TOOL_CHOICES = frozenset({"auto", "none", "required"})
MAX_STOP = 4
MAX_STOP_CHARS = 256
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A function's or a response schema's name, as OpenAI allows them."""
_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


def validate_call(call: ChatCall, settings: LlmSettings, *, has_history: bool = False) -> None:
    """Raises when `call` is not a valid chat request under `settings`' limits.

    Args:
        call: The call.
        settings: The limits.
        has_history: A conversation supplies earlier messages, so `messages` may be empty.

    Raises:
        InvalidArgument: A missing or malformed field (its path is in the error).
        ResourceExhausted: Too many messages or characters (reason REQUEST_TOO_LARGE).
    """
    validate_messages(call.messages, settings, allow_empty=has_history)
    validate_params(call.params, settings)


def validate_messages(messages: list[Message], settings: LlmSettings, *, allow_empty: bool) -> None:
    """Checks roles, contents and the size limits of `messages`."""
    if not messages and not allow_empty:
        raise InvalidArgument.for_field("messages", "at least one message is required")
    if len(messages) > settings.max_messages:
        raise ResourceExhausted.too_large("messages", len(messages), settings.max_messages)
    chars = 0
    for i, message in enumerate(messages):
        chars += _check_message(f"messages[{i}]", message)
    if chars > settings.max_message_chars:
        raise ResourceExhausted.too_large("the messages' text", chars, settings.max_message_chars)


def _check_message(where: str, message: Message) -> int:
    role = message.get("role", "")
    if role not in ROLES:
        raise InvalidArgument.for_field(f"{where}.role", f"{role!r} is not one of {sorted(ROLES)}")
    content = message.get("content", "")
    if not isinstance(content, str):
        raise InvalidArgument.for_field(f"{where}.content", "must be a string")
    calls = message.get("tool_calls") or []
    if calls and role != "assistant":
        raise InvalidArgument.for_field(f"{where}.tool_calls", "only assistant messages call tools")
    if role == "tool" and not message.get("tool_call_id"):
        raise InvalidArgument.for_field(f"{where}.tool_call_id", "a tool message needs the call id")
    if not content and not calls and role != "assistant":
        raise InvalidArgument.for_field(f"{where}.content", "must not be empty")
    return len(content) + sum(len(str(c)) for c in calls)


def validate_params(params: Mapping[str, Any], settings: LlmSettings) -> None:
    """Checks the OpenAI parameters of a call."""
    for name, (low, high) in _RANGES.items():
        value = params.get(name)
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise InvalidArgument.for_field(name, f"must be between {low:g} and {high:g}")
    max_tokens = params.get("max_tokens")
    if max_tokens is not None and not 1 <= max_tokens <= settings.max_output_tokens:
        raise InvalidArgument.for_field(
            "max_tokens", f"must be between 1 and {settings.max_output_tokens}"
        )
    _check_stop(params.get("stop") or [])
    _check_tools(params.get("tools") or [], params.get("tool_choice"), settings)
    _check_response_format(params.get("response_format"))


def _check_stop(stop: list[str]) -> None:
    if len(stop) > MAX_STOP:
        raise InvalidArgument.for_field("stop", f"at most {MAX_STOP} stop sequences")
    for i, sequence in enumerate(stop):
        if not sequence or len(sequence) > MAX_STOP_CHARS:
            raise InvalidArgument.for_field(f"stop[{i}]", f"must be 1 to {MAX_STOP_CHARS} chars")


def _check_tools(tools: list[dict[str, Any]], choice: Any, settings: LlmSettings) -> None:
    if len(tools) > settings.max_tools:
        raise ResourceExhausted.too_large("tools", len(tools), settings.max_tools)
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") or {}
        name = function.get("name", "")
        if tool.get("type", "function") != "function":
            raise InvalidArgument.for_field(f"tools[{i}].type", "only 'function' tools exist")
        check_name(f"tools[{i}].function.name", name)
        names.add(name)
    _check_tool_choice(choice, names)


def _check_tool_choice(choice: Any, names: set[str]) -> None:
    if choice is None or choice == "none":
        return
    if not names:
        raise InvalidArgument.for_field("tool_choice", "only allowed when tools are given")
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        return
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if name not in names:
        raise InvalidArgument.for_field(
            "tool_choice", f"{choice!r} is neither auto/none/required nor one of the tools"
        )


def _check_response_format(response_format: Any) -> None:
    if response_format is None:
        return
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        check_name("response_format.json_schema.name", str(spec.get("name", "")))
        schema = spec.get("schema")
        if not isinstance(schema, dict) or not schema:
            raise InvalidArgument.for_field("response_format.json_schema", "a schema is required")
        check_json_schema("response_format.json_schema", schema)
    elif kind not in ("text", "json_object"):
        raise InvalidArgument.for_field("response_format.type", f"unknown type {kind!r}")


def check_name(where: str, name: str) -> None:
    """Raises InvalidArgument unless `name` is 1-64 letters, digits, '_' or '-'."""
    if not NAME.fullmatch(name):
        raise InvalidArgument.for_field(where, f"{name!r}: 1-64 letters, digits, '_' or '-'")


def check_json_schema(where: str, schema: dict[str, Any]) -> None:
    """Raises InvalidArgument when `schema` is not a valid JSON schema."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise InvalidArgument.for_field(where, f"not a valid JSON schema: {err.message}") from err
