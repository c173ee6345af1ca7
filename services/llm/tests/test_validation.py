"""The chat rules (nexus.llm.validation), in the one place they live: no network needed."""

from __future__ import annotations

from typing import Any

import pytest

from nexus.common.errors import InvalidArgument, ResourceExhausted
from nexus.llm.settings import LlmSettings
from nexus.llm.validation import validate_messages, validate_params

SETTINGS = LlmSettings(max_output_tokens=100, max_tools=2, max_messages=3)
TOOL = {"type": "function", "function": {"name": "lookup"}}


def field_of(params: dict[str, Any]) -> str:
    with pytest.raises(InvalidArgument) as caught:
        validate_params(params, SETTINGS)
    return caught.value.violations[0].field


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"presence_penalty": 2.1}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ["ok", ""]}, "stop[1]"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "web", "function": {"name": "f"}}]}, "tools[0].type"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"function": {"name": "ghost"}}}, "tool_choice"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x y"}}},
            "response_format.json_schema.name",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema",
        ),
    ],
)
def test_a_parameter_outside_the_rules_names_its_field(params: dict[str, Any], field: str) -> None:
    assert field_of(params) == field


def test_parameters_within_the_rules_pass() -> None:
    validate_params(
        {
            "temperature": 0,
            "top_p": 1,
            "max_tokens": 100,
            "stop": ["\n"],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "lookup"}},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer-1", "schema": {"type": "object"}},
            },
        },
        SETTINGS,
    )
    validate_params({"tool_choice": "none"}, SETTINGS)


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
        validate_messages([message], SETTINGS, allow_empty=False)  # type: ignore[list-item]

    assert caught.value.violations[0].field == field


def test_a_json_schema_format_without_its_spec_names_the_name() -> None:
    assert field_of({"response_format": {"type": "json_schema"}}) == (
        "response_format.json_schema.name"
    )
