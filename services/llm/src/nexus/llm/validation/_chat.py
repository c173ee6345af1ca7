"""Checks of a chat call before it costs anything: OpenAI's rules for every parameter, then what
Nexus adds (its limits, the features it does not serve), then the parameters the provider takes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any

import jsonschema

from nexus.common.errors import InvalidArgument, ResourceExhausted
from nexus.llm.settings import LlmSettings
from nexus.llm.types import ChatCall, Message
from nexus.llm.validation._errors import (
    INVALID_TYPE,
    check_finite,
    check_parameter,
    missing,
    unsupported,
    validators,
    violation,
)
from nexus.llm.validation._rules import CHAT_PARAMETERS

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
TOOL_CHOICES = frozenset({"auto", "none", "required"})
MAX_STOP_CHARS = 256
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A function's or a response schema's name, as OpenAI allows them."""

FORWARDED = frozenset(
    {
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "max_tokens",
        "seed",
        "stop",
        "response_format",
        "tools",
        "tool_choice",
        "user",
        "parallel_tool_calls",
        "logit_bias",
        "reasoning_effort",
        "verbosity",
        "service_tier",
        "web_search_options",
        "prediction",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
"""The parameters passed on to the provider (litellm maps each, or drops one a provider lacks).
The others have no effect once checked: `stream` and `stream_options` are the caller's choice of
RPC and rendering, `metadata` and `store: false` concern storage Nexus does not offer, and
`n: 1`, `logprobs: false` and the like ask for the default."""

_INTEGERS = ("max_tokens", "seed")
_SHAPED = frozenset({"tools", "tool_choice", "response_format"})
"""Parameters whose typed fields give them OpenAI's shape (see `validate_params`)."""
_VALIDATORS = validators(CHAT_PARAMETERS)
_TEXT_PART_KEYS = {"text": "text", "refusal": "refusal"}


def model_name(call: ChatCall) -> str:
    """The model a call names ("" for none). OpenAI answers an unknown model before any other
    parameter, so this is the one check before the model is looked up.

    Raises:
        InvalidArgument: A model that is not a string.
    """
    if "model" not in call.raw_params:
        return call.model
    check_parameter(_VALIDATORS, "model", call.raw_params["model"])
    if call.model:
        raise _twice("model")
    return str(call.raw_params["model"])


def validate_call(call: ChatCall, settings: LlmSettings, *, has_history: bool = False) -> ChatCall:
    """The call as the provider takes it, or an error for the first parameter outside the rules.

    Args:
        call: The call; `raw_params` holds parameters as OpenAI JSON, unchecked.
        settings: The limits.
        has_history: A conversation supplies earlier messages, so `messages` may be empty.

    Returns:
        The call with its messages (those in `raw_params` converted) and only the parameters
        the provider takes (`FORWARDED`), whole numbers as integers.

    Raises:
        InvalidArgument: A parameter outside OpenAI's rules or Nexus's (its path in the error),
            or one that Nexus does not serve (reason UNSUPPORTED_PARAMETER).
        ResourceExhausted: Too many messages, characters or tools (reason REQUEST_TOO_LARGE).
    """
    raw = {k: v for k, v in call.raw_params.items() if k != "model"}
    params = _merged(call.params, raw)
    messages = call.messages
    if "messages" in params:
        if messages:
            raise _twice("messages")
        messages = messages_from_openai(params.pop("messages"))
    params = validate_params(params, settings, typed=call.params.keys())
    validate_messages(messages, settings, allow_empty=has_history)
    return replace(call, messages=messages, params=params, raw_params={})


def validate_params(
    params: Mapping[str, Any], settings: LlmSettings, *, typed: Collection[str] = ()
) -> dict[str, Any]:
    """Checks OpenAI chat parameters (without `model` and `messages`); returns those the
    provider takes (see `validate_call`).

    Args:
        params: The parameters, as OpenAI JSON.
        settings: The limits.
        typed: Those that came from the request's typed fields: tools, tool choices and
            response formats made from those have OpenAI's shape already, and skip its schema
            (the costliest to check); their numbers and values are checked all the same.
    """
    for name, value in params.items():
        if name in _SHAPED and name in typed:
            check_finite(name, value)
        else:
            check_parameter(_VALIDATORS, name, value)
    _refuse_unsupported(params)
    _check_limits(params, settings)
    _check_tools(params, settings)
    return _provider_params(params)


# Messages.


def messages_from_openai(value: Any) -> list[Message]:
    """Messages as OpenAI's JSON, checked and converted (text parts joined by newlines)."""
    check_parameter(_VALIDATORS, "messages", value)
    for i, message in enumerate(value):
        _refuse_unsupported_message(f"messages[{i}]", message)
    return [_message(m) for m in value]


def validate_messages(messages: list[Message], settings: LlmSettings, *, allow_empty: bool) -> None:
    """Checks roles, contents and the size limits of `messages`."""
    if not messages and not allow_empty:
        raise missing("messages")
    if len(messages) > settings.max_messages:
        raise ResourceExhausted.too_large("messages", len(messages), settings.max_messages)
    chars = 0
    for i, message in enumerate(messages):
        chars += _check_message(f"messages[{i}]", message)
    if chars > settings.max_message_chars:
        raise ResourceExhausted.too_large("the messages' text", chars, settings.max_message_chars)


def _check_message(where: str, message: Message) -> int:
    role = message.get("role", "")
    if role == "function":
        raise unsupported(f"{where}.role", "'function' messages are not supported; use tools.")
    if role not in ROLES:
        allowed = ", ".join(f"'{r}'" for r in sorted(ROLES))
        text = f"Invalid value for '{where}.role': {role!r}. Supported values are: {allowed}."
        raise violation(f"{where}.role", text)
    content = message.get("content", "")
    if not isinstance(content, str):
        raise violation(f"{where}.content", f"'{where}.content' must be a string.", INVALID_TYPE)
    calls = message.get("tool_calls") or []
    if calls and role != "assistant":
        raise violation(f"{where}.tool_calls", f"'{where}.tool_calls': only assistants call tools.")
    if role == "tool" and not message.get("tool_call_id"):
        raise missing(f"{where}.tool_call_id")
    if not content and not calls and role != "assistant":
        raise violation(f"{where}.content", f"'{where}.content' must not be empty.")
    return len(content) + sum(len(str(c)) for c in calls)


def _refuse_unsupported_message(where: str, message: Mapping[str, Any]) -> None:
    """Valid OpenAI messages that a Nexus message cannot hold."""
    if message["role"] == "function":
        raise unsupported(f"{where}.role", "'function' messages are not supported; use tools.")
    content = message.get("content")
    for j, part in enumerate(content if isinstance(content, list) else []):
        if part["type"] not in _TEXT_PART_KEYS:
            raise unsupported(
                f"{where}.content[{j}].type",
                f"Content parts of type '{part['type']}' are not supported: send text.",
            )
    for key in ("audio", "function_call"):
        if message.get(key) is not None:
            raise unsupported(f"{where}.{key}", f"'{key}' in messages is not supported.")
    for k, call in enumerate(message.get("tool_calls") or []):
        if call["type"] != "function":
            raise unsupported(f"{where}.tool_calls[{k}].type", "Only function tool calls exist.")


def _message(message: Mapping[str, Any]) -> Message:
    """A checked OpenAI message as the domain's (string content, known keys only)."""
    out: Message = {"role": message["role"], "content": _text(message.get("content"))}
    if message.get("name"):
        out["name"] = message["name"]
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": dict(c["function"])}
            for c in message["tool_calls"]
        ]
    if message["role"] == "tool":
        out["tool_call_id"] = message["tool_call_id"]
    return out


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(part[_TEXT_PART_KEYS[part["type"]]] for part in content)


# Parameters.


def _merged(params: Mapping[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
    for name in raw:
        if name in params:
            raise _twice(name)
    return {**params, **raw}


def _twice(name: str) -> InvalidArgument:
    return violation(name, f"'{name}' is set both in its own field and in openai_parameters.")


def _refuse_unsupported(params: Mapping[str, Any]) -> None:
    """Valid OpenAI parameters whose effect Nexus cannot give: refused, so nobody relies on them."""
    if params.get("n") not in (None, 1):
        raise unsupported("n", "Only n=1 is supported: ask for one choice per request.")
    if params.get("logprobs"):
        raise unsupported("logprobs", "logprobs are not supported.")
    if params.get("top_logprobs") is not None:
        raise unsupported("top_logprobs", "top_logprobs need logprobs, which are not supported.")
    if "audio" in (params.get("modalities") or ()):
        raise unsupported("modalities", "Only text output is supported: modalities ['text'].")
    if params.get("audio") is not None:
        raise unsupported("audio", "Audio output is not supported.")
    if params.get("store"):
        raise unsupported("store", "Nexus does not store completions: leave 'store' unset.")
    if params.get("moderation") is not None:
        raise unsupported("moderation", "Moderation of requests and replies is not supported.")
    for legacy in ("functions", "function_call"):
        if params.get(legacy) is not None:
            raise unsupported(legacy, f"'{legacy}' is deprecated and not supported; use 'tools'.")


def _check_limits(params: Mapping[str, Any], settings: LlmSettings) -> None:
    for name in ("max_tokens", "max_completion_tokens"):
        most = params.get(name)
        if most is not None and most > settings.max_output_tokens:
            raise violation(
                name,
                f"Invalid '{name}': {most:.0f} is more than this deployment's limit of "
                f"{settings.max_output_tokens} tokens.",
            )
    stop = params.get("stop")
    for i, sequence in enumerate([stop] if isinstance(stop, str) else stop or []):
        if not sequence or len(sequence) > MAX_STOP_CHARS:
            message = f"Invalid 'stop[{i}]': stop sequences are 1 to {MAX_STOP_CHARS} characters."
            raise violation(f"stop[{i}]", message)
    if params.get("stream_options") is not None and params.get("stream") is not True:
        message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        raise violation("stream_options", message)
    _check_response_format(params.get("response_format"))


def _check_response_format(response_format: Any) -> None:
    if response_format is None or response_format["type"] != "json_schema":
        return
    spec = response_format["json_schema"]
    check_name("response_format.json_schema.name", spec["name"])
    schema = spec.get("schema")
    if not schema:
        raise unsupported(
            "response_format.json_schema.schema",
            "A json_schema response format needs its schema here (json_object asks for any "
            "JSON object).",
        )
    check_json_schema("response_format.json_schema.schema", schema)


def _check_tools(params: Mapping[str, Any], settings: LlmSettings) -> None:
    tools = params.get("tools") or []
    if len(tools) > settings.max_tools:
        raise ResourceExhausted.too_large("tools", len(tools), settings.max_tools)
    names = set()
    for i, tool in enumerate(tools):
        if tool["type"] != "function":
            raise unsupported(f"tools[{i}].type", "Only tools of type 'function' are supported.")
        function = tool["function"]
        check_name(f"tools[{i}].function.name", function["name"])
        if function.get("parameters"):
            check_json_schema(f"tools[{i}].function.parameters", function["parameters"])
        names.add(function["name"])
    for name in ("tool_choice", "parallel_tool_calls"):
        if params.get(name) not in (None, "none") and not names:
            message = f"Invalid value for '{name}': it is only allowed when 'tools' are given."
            raise violation(name, message)
    _check_tool_choice(params.get("tool_choice"), names)


def _check_tool_choice(choice: Any, names: set[str]) -> None:
    if not isinstance(choice, dict):
        return
    kind = choice["type"]
    if kind != "function":
        raise unsupported("tool_choice.type", f"A tool choice of type '{kind}' is not supported.")
    if choice["function"]["name"] not in names:
        raise violation(
            "tool_choice.function.name",
            f"Invalid value for 'tool_choice.function.name': {choice['function']['name']!r} is "
            "not the name of one of the tools.",
        )


def _provider_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in params.items() if k in FORWARDED and v is not None}
    if params.get("max_completion_tokens") is not None:
        out["max_tokens"] = params["max_completion_tokens"]
    for name in _INTEGERS:
        if name in out:
            out[name] = int(out[name])
    if "logit_bias" in out:
        out["logit_bias"] = {token: int(bias) for token, bias in out["logit_bias"].items()}
    return out


def check_name(where: str, name: str) -> None:
    """Raises InvalidArgument unless `name` is 1-64 letters, digits, '_' or '-'."""
    if not NAME.fullmatch(name):
        raise violation(where, f"Invalid '{where}': {name!r}: 1-64 letters, digits, '_' or '-'.")


def check_json_schema(where: str, schema: dict[str, Any]) -> None:
    """Raises InvalidArgument when `schema` is not a valid JSON schema."""
    problem = _schema_problem(json.dumps(schema, sort_keys=True))
    if problem is not None:
        raise violation(where, f"Invalid '{where}': not a valid JSON schema: {problem}")


@functools.lru_cache(maxsize=1024)
def _schema_problem(text: str) -> str | None:
    """Why a JSON schema (as canonical JSON) is not valid, or None. Checking one against its
    metaschema takes about a millisecond, and clients send the same tools and formats again
    and again."""
    schema = json.loads(text)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        return str(err.message)
    return None
