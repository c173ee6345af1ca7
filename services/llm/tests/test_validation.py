"""The chat rules (nexus.llm.validation), in the one place they live: no network needed."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.common.errors import InvalidArgument, ResourceExhausted
from nexus.llm.settings import LlmSettings
from nexus.llm.types import ChatCall
from nexus.llm.validation import (
    EMPTY_ARRAY,
    INVALID_TYPE,
    INVALID_VALUE,
    MISSING_REQUIRED_PARAMETER,
    UNKNOWN_PARAMETER,
    UNSUPPORTED_PARAMETER,
    model_name,
    validate_call,
    validate_messages,
    validate_params,
)

SETTINGS = LlmSettings(max_output_tokens=100, max_tools=2, max_messages=3)
TOOL = {"type": "function", "function": {"name": "lookup"}}
USER = {"role": "user", "content": "hi"}
HUGE = float("inf")
"""What a JSON number of hundreds of digits becomes on its way (a double cannot hold it)."""


def refusal(params: dict[str, Any]) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate_params(params, SETTINGS)
    return caught.value


def field_of(params: dict[str, Any]) -> str:
    return refusal(params).violations[0].field


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": HUGE}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"presence_penalty": 2.1}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"max_completion_tokens": 101}, "max_completion_tokens"),
        ({"max_completion_tokens": HUGE}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ["ok", ""]}, "stop[1]"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "web", "function": {"name": "f"}}]}, "tools[0].type"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}]},
            "tools[0].function.parameters",
        ),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "ghost"}}},
            "tool_choice.function.name",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x y"}}},
            "response_format.json_schema.name",
        ),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        (
            {"stream": True, "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
        ),
    ],
)
def test_a_parameter_outside_the_rules_names_its_field(params: dict[str, Any], field: str) -> None:
    assert field_of(params) == field


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"metadata": []}, "metadata", INVALID_TYPE),
        ({"metadata": {"k": 1}}, "metadata.k", INVALID_TYPE),
        (
            {"metadata": {f"k{i}": "v" for i in range(17)}},
            "metadata",
            "OBJECT_ABOVE_MAX_PROPERTIES",
        ),
        ({"metadata": {"k" * 65: "v"}}, "metadata", INVALID_VALUE),
        ({"metadata": {"k": "v" * 513}}, "metadata.k", "STRING_ABOVE_MAX_LENGTH"),
        ({"top_logprobs": 21}, "top_logprobs", "INTEGER_ABOVE_MAX_VALUE"),
        ({"top_logprobs": -1}, "top_logprobs", "INTEGER_BELOW_MIN_VALUE"),
        ({"top_logprobs": 1.5}, "top_logprobs", INVALID_TYPE),
        ({"temperature": 3}, "temperature", "DECIMAL_ABOVE_MAX_VALUE"),
        ({"n": 200.0}, "n", "INTEGER_ABOVE_MAX_VALUE"),
        ({"temperature": 2.5}, "temperature", "DECIMAL_ABOVE_MAX_VALUE"),
        ({"temperature": "hot"}, "temperature", INVALID_TYPE),
        ({"store": "yes"}, "store", INVALID_TYPE),
        ({"modalities": ["video"]}, "modalities[0]", INVALID_VALUE),
        ({"modalities": "text"}, "modalities", INVALID_TYPE),
        ({"reasoning_effort": "extreme"}, "reasoning_effort", INVALID_VALUE),
        ({"verbosity": 1}, "verbosity", INVALID_VALUE),
        ({"audio": {"voice": "alloy", "format": "mp4"}}, "audio.format", INVALID_VALUE),
        ({"audio": {"format": "mp3"}}, "audio.voice", MISSING_REQUIRED_PARAMETER),
        (
            {"audio": {"voice": {"id": "v", "x": 1}, "format": "mp3"}},
            "audio.voice.x",
            UNKNOWN_PARAMETER,
        ),
        ({"logit_bias": {"50256": 101}}, "logit_bias.50256", "INTEGER_ABOVE_MAX_VALUE"),
        ({"logit_bias": {"50256": 0.5}}, "logit_bias.50256", INVALID_TYPE),
        ({"logit_bias": {"hello": 1}}, "logit_bias", INVALID_VALUE),
        ({"logit_bias": {"1": HUGE}}, "logit_bias.1", INVALID_VALUE),
        ({"service_tier": "turbo"}, "service_tier", INVALID_VALUE),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls", INVALID_TYPE),
        ({"parallel_tool_calls": None}, "parallel_tool_calls", INVALID_TYPE),
        ({"safety_identifier": "x" * 65}, "safety_identifier", "STRING_ABOVE_MAX_LENGTH"),
        ({"prompt_cache_retention": "1y"}, "prompt_cache_retention", INVALID_VALUE),
        (
            {"web_search_options": {"user_location": {"type": "approximate"}}},
            "web_search_options.user_location.approximate",
            MISSING_REQUIRED_PARAMETER,
        ),
        ({"prediction": {"type": "content", "content": []}}, "prediction.content", EMPTY_ARRAY),
        ({"n": 0}, "n", "INTEGER_BELOW_MIN_VALUE"),
        ({"n": 129}, "n", "INTEGER_ABOVE_MAX_VALUE"),
        ({"seed": 2.0**63}, "seed", "INTEGER_ABOVE_MAX_VALUE"),
        ({"seed": "1"}, "seed", INVALID_TYPE),
        ({"stop": []}, "stop", EMPTY_ARRAY),
        ({"stop": 7}, "stop", INVALID_TYPE),
        ({"tools": None}, "tools", INVALID_TYPE),
        ({"tools": [{"type": "function"}]}, "tools[0].function", MISSING_REQUIRED_PARAMETER),
        ({"tool_choice": "sometimes"}, "tool_choice", INVALID_VALUE),
        ({"user": None}, "user", INVALID_TYPE),
        ({"functions": []}, "functions", EMPTY_ARRAY),
        ({"function_call": "always"}, "function_call", INVALID_VALUE),
        ({"top_k": 5}, "top_k", UNKNOWN_PARAMETER),
    ],
)
def test_openai_s_rules_name_the_parameter_and_openai_s_code(
    params: dict[str, Any], field: str, reason: str
) -> None:
    error = refusal(params)

    assert (error.violations[0].field, error.reason) == (field, reason)
    assert error.message


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 5}, "top_logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"store": True}, "store"),
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"tools": [{"type": "custom", "custom": {"name": "grep"}}]}, "tools[0].type"),
        (
            {
                "tools": [TOOL],
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "auto", "tools": []},
                },
            },
            "tool_choice.type",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_valid_parameters_nexus_does_not_serve_are_refused_as_unsupported(
    params: dict[str, Any], field: str
) -> None:
    error = refusal(params)

    assert (error.violations[0].field, error.reason) == (field, UNSUPPORTED_PARAMETER)
    assert error.message.startswith(f"Unsupported parameter: '{field}'.")


def test_parameters_within_the_rules_pass_and_the_provider_gets_those_with_an_effect() -> None:
    params = validate_params(
        {
            "temperature": 0,
            "top_p": 1,
            "max_tokens": 100.0,
            "max_completion_tokens": 7.0,
            "seed": -5.0,
            "stop": ["\n"],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            "parallel_tool_calls": False,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer-1", "schema": {"type": "object"}},
            },
            "logit_bias": {"50256": -100.0},
            "reasoning_effort": "low",
            "verbosity": None,
            "service_tier": "auto",
            "metadata": {"team": "search"},
            "store": False,
            "n": 1,
            "logprobs": False,
            "top_logprobs": None,
            "modalities": ["text"],
            "stream": True,
            "stream_options": {"include_usage": True},
            "prompt_cache_options": {"ttl": "30m"},
        },
        SETTINGS,
    )

    assert params["max_tokens"] == 7
    assert isinstance(params["max_tokens"], int)
    assert params["seed"] == -5
    assert isinstance(params["seed"], int)
    assert params["logit_bias"] == {"50256": -100}
    assert (params["reasoning_effort"], params["service_tier"]) == ("low", "auto")
    assert params["parallel_tool_calls"] is False
    dropped = {"metadata", "store", "n", "logprobs", "modalities", "stream", "stream_options"}
    assert not dropped & params.keys()
    assert not {"verbosity", "top_logprobs", "max_completion_tokens", "prompt_cache_options"} & (
        params.keys()
    )
    assert validate_params({"tool_choice": "none"}, SETTINGS) == {"tool_choice": "none"}


def test_too_many_tools_or_messages_are_resource_exhausted() -> None:
    with pytest.raises(ResourceExhausted):
        validate_params({"tools": [TOOL, TOOL, TOOL]}, SETTINGS)
    with pytest.raises(ResourceExhausted):
        validate_messages([{"role": "user", "content": "x"}] * 4, SETTINGS, allow_empty=False)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": "robot", "content": "x"}, "messages[0].role"),
        ({"role": "user", "content": ""}, "messages[0].content"),
        ({"role": "tool", "content": "x"}, "messages[0].tool_call_id"),
        ({"role": "user", "content": "x", "tool_calls": [{"id": "1"}]}, "messages[0].tool_calls"),
    ],
)
def test_a_bad_message_names_its_field(message: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_messages([message], SETTINGS, allow_empty=False)

    assert caught.value.violations[0].field == field


def test_no_messages_at_all_is_a_missing_parameter() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_messages([], SETTINGS, allow_empty=False)

    assert (caught.value.violations[0].field, caught.value.reason) == (
        "messages",
        MISSING_REQUIRED_PARAMETER,
    )


def call_of(**raw: Any) -> ChatCall:
    return ChatCall(model="" if "model" in raw else "tiny", messages=[], raw_params=raw)


def test_openai_messages_are_checked_and_converted() -> None:
    call_id = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call_id]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "name": "bot"},
    ]

    call = validate_call(call_of(messages=messages), LlmSettings())

    assert call.messages == [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "", "tool_calls": [call_id]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "assistant", "content": "no", "name": "bot"},
    ]
    assert call.raw_params == {}


@pytest.mark.parametrize(
    ("messages", "field", "reason"),
    [
        ([], "messages", EMPTY_ARRAY),
        ("hi", "messages", INVALID_TYPE),
        (["hi"], "messages[0]", INVALID_TYPE),
        ([{"content": "x"}], "messages[0].role", MISSING_REQUIRED_PARAMETER),
        ([{"role": "user"}], "messages[0].content", MISSING_REQUIRED_PARAMETER),
        ([{"role": "user", "content": None}], "messages[0].content", INVALID_TYPE),
        (
            [{"role": "user", "content": [{"type": "text"}]}],
            "messages[0].content[0].text",
            MISSING_REQUIRED_PARAMETER,
        ),
        ([{"role": "user", "content": "x", "name": 1}], "messages[0].name", INVALID_TYPE),
        (
            [{"role": "tool", "content": "x"}],
            "messages[0].tool_call_id",
            MISSING_REQUIRED_PARAMETER,
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x"}}],
                }
            ],
            "messages[0].content[0].type",
            UNSUPPORTED_PARAMETER,
        ),
        (
            [{"role": "function", "content": "x", "name": "f"}],
            "messages[0].role",
            UNSUPPORTED_PARAMETER,
        ),
        (
            [{"role": "assistant", "audio": {"id": "a1"}}],
            "messages[0].audio",
            UNSUPPORTED_PARAMETER,
        ),
    ],
)
def test_bad_openai_messages_name_their_field(messages: Any, field: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_call(call_of(messages=messages), LlmSettings())

    assert (caught.value.violations[0].field, caught.value.reason) == (field, reason)


def test_a_parameter_set_twice_is_refused() -> None:
    call = ChatCall(
        model="tiny", messages=[USER], params={"temperature": 1.0}, raw_params={"temperature": 0.5}
    )

    with pytest.raises(InvalidArgument) as caught:
        validate_call(call, SETTINGS)

    assert caught.value.violations[0].field == "temperature"


def test_the_model_is_checked_before_anything_else() -> None:
    assert model_name(ChatCall(model="tiny", messages=[])) == "tiny"
    assert model_name(call_of(model="named-raw")) == "named-raw"
    with pytest.raises(InvalidArgument) as caught:
        model_name(call_of(model=3.0, messages="not even messages"))

    assert (caught.value.violations[0].field, caught.value.reason) == ("model", INVALID_TYPE)


def test_raw_parameters_merge_into_the_call() -> None:
    call = ChatCall(
        model="tiny",
        messages=[USER],
        params={"temperature": 0.5},
        raw_params={
            "reasoning_effort": "high",
            "metadata": {"a": "b"},
            "max_completion_tokens": 9.0,
        },
    )

    checked = validate_call(call, SETTINGS)

    assert checked.params == {"temperature": 0.5, "reasoning_effort": "high", "max_tokens": 9}
    assert (checked.messages, checked.raw_params) == ([USER], {})


def test_tools_from_typed_fields_skip_the_shape_check_but_not_their_numbers() -> None:
    """A typed tool has OpenAI's shape already; a number too large inside it is still refused."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"maxItems": HUGE}}}
    call = ChatCall(model="tiny", messages=[USER], params={"tools": [tool]})

    with pytest.raises(InvalidArgument) as caught:
        validate_call(call, SETTINGS)

    assert caught.value.violations[0].field == "tools[0].function.parameters.maxItems"
