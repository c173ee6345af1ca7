"""OpenAI request bodies -> the llm service's messages, and OpenAI's validation of them."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.gateway.openai.errors import OpenAIError
from nexus.gateway.openai.requests import (
    MAX_SCHEMA_DEPTH,
    cache_mode,
    chat_completion_call,
    embedding_call,
    parse_json,
)

USER = {"role": "user", "content": "Hello"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [USER], **fields}


def refusal(body: dict[str, Any]) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        chat_completion_call(body)
    assert caught.value.status == 400
    return caught.value


def test_a_full_request_maps_every_parameter() -> None:
    weather = {"type": "object", "properties": {"city": {"type": "string"}}}
    call = chat_completion_call(
        chat(
            messages=[{"role": "system", "content": "Be brief."}, USER],
            temperature=0.5,
            top_p=1,
            presence_penalty=-2,
            frequency_penalty=1.5,
            max_tokens=9,
            seed=-7,
            stop="END",
            user="u-1",
            tools=[{"type": "function", "function": {"name": "weather", "parameters": weather}}],
            tool_choice="auto",
        ),
        cache=pb.CACHE_MODE_DISABLED,
    )
    request = call.request

    assert (request.model, [m.role for m in request.messages]) == ("tiny", ["system", "user"])
    assert request.messages[1].content == "Hello"
    assert (request.temperature, request.top_p) == (0.5, 1.0)
    assert (request.presence_penalty, request.frequency_penalty) == (-2.0, 1.5)
    assert (request.max_tokens, request.seed, list(request.stop)) == (9, -7, ["END"])
    assert (request.user, request.tool_choice, request.cache_mode) == ("u-1", "auto", 1)
    assert request.tools[0].function.name == "weather"
    assert json_format.MessageToDict(request.tools[0].function.parameters) == weather
    assert (call.stream, call.include_usage) == (False, False)


def test_absent_parameters_stay_unset() -> None:
    request = chat_completion_call(chat(temperature=None, stop=None, seed=None)).request

    for name in ("temperature", "top_p", "max_tokens", "seed", "presence_penalty"):
        assert not request.HasField(name)
    assert not request.HasField("response_format")
    assert (list(request.stop), request.tool_choice, request.user) == ([], "", "")


def test_unknown_fields_are_ignored() -> None:
    body = chat(store=False, metadata={"a": "b"}, parallel_tool_calls=True, service_tier="auto")
    body["messages"] = [{**USER, "audio": None, "refusal": None}]

    assert chat_completion_call(body).request.messages[0].content == "Hello"


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    request = chat_completion_call(chat(max_tokens=100, max_completion_tokens=5)).request

    assert request.max_tokens == 5


def test_text_parts_are_joined() -> None:
    content = [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    request = chat_completion_call(chat(messages=[{"role": "user", "content": content}])).request

    assert request.messages[0].content == "one\ntwo"


def test_tool_calls_and_tool_answers_round_trip() -> None:
    call = {"id": "call-1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call-1", "content": "sunny"},
        {"role": "developer", "content": "Answer in French.", "name": "ops"},
    ]
    request = chat_completion_call(chat(messages=messages)).request
    assistant, tool, developer = request.messages[1:]

    assert (assistant.content, assistant.tool_calls[0].id) == ("", "call-1")
    assert (assistant.tool_calls[0].function.name, assistant.tool_calls[0].function.arguments) == (
        "f",
        "{}",
    )
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call-1", "sunny")
    assert (developer.role, developer.name) == ("developer", "ops")


def test_stream_options() -> None:
    plain = chat_completion_call(chat(stream=True))
    with_usage = chat_completion_call(chat(stream=True, stream_options={"include_usage": True}))

    assert (plain.stream, plain.include_usage) == (True, False)
    assert (with_usage.stream, with_usage.include_usage) == (True, True)
    assert refusal(chat(stream_options={"include_usage": True})).param == "stream_options"


def test_response_formats() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    json_object = chat_completion_call(chat(response_format={"type": "json_object"})).request
    json_schema = chat_completion_call(
        chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "count", "schema": schema, "strict": True},
            }
        )
    ).request
    fmt = json_schema.response_format

    assert json_object.response_format.type == pb.ResponseFormat.TYPE_JSON_OBJECT
    assert (fmt.type, fmt.schema_name, fmt.strict) == (3, "count", True)
    assert json_format.MessageToDict(fmt.json_schema) == schema


def test_a_named_tool_choice_is_the_function_name() -> None:
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    choice = {"type": "function", "function": {"name": "lookup"}}

    assert chat_completion_call(chat(tools=tools, tool_choice=choice)).request.tool_choice == (
        "lookup"
    )
    assert chat_completion_call(chat(tool_choice="none")).request.tool_choice == "none"


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"model": None}, "model", "missing_required_parameter"),
        ({"model": 3}, "model", "invalid_type"),
        ({"messages": None}, "messages", "missing_required_parameter"),
        ({"messages": []}, "messages", "empty_array"),
        ({"messages": "hi"}, "messages", "invalid_type"),
        ({"messages": ["hi"]}, "messages[0]", "invalid_type"),
        (
            {"messages": [{"role": "function", "content": "x", "name": "f"}]},
            "messages[0].role",
            "unsupported_parameter",
        ),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "messages[0].content[0].type",
            "unsupported_parameter",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
            "invalid_type",
        ),
        (
            {"messages": [{"role": "assistant", "content": None}]},
            "messages[0].content",
            "missing_required_parameter",
        ),
        (
            {"messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
            "missing_required_parameter",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "name": 1}]},
            "messages[0].name",
            "invalid_type",
        ),
        ({"messages": [{"content": "x"}]}, "messages[0].role", "missing_required_parameter"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"temperature": 10**400}, "temperature", "invalid_value"),
        ({"temperature": True}, "temperature", "invalid_type"),
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"n": 0}, "n", "invalid_value"),
        ({"stop": [1]}, "stop[0]", "invalid_type"),
        ({"stop": 7}, "stop", "invalid_type"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens", "invalid_type"),
        ({"max_tokens": 2**31}, "max_tokens", "invalid_value"),
        ({"seed": "1"}, "seed", "invalid_type"),
        ({"seed": 2**63}, "seed", "invalid_value"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "invalid_type",
        ),
        ({"tools": {}}, "tools", "invalid_type"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_parameter"),
        (
            {"tools": [{"type": "function", "function": {}}]},
            "tools[0].function.name",
            "missing_required_parameter",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
            "invalid_type",
        ),
        (
            {"tool_choice": {"type": "function", "function": {"name": "auto"}}},
            "tool_choice",
            "unsupported_parameter",
        ),
        ({"user": 42}, "user", "invalid_type"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    fields: dict[str, Any], param: str, code: str
) -> None:
    error = refusal(chat(**fields))

    assert (error.param, error.code, error.type) == (param, code, "invalid_request_error")
    assert error.body() == {
        "error": {"message": error.message, "type": error.type, "param": param, "code": code}
    }


def test_schemas_nest_at_most_the_limit() -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(MAX_SCHEMA_DEPTH):
        deep = {"type": "object", "properties": {"x": deep}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": deep}}]

    assert refusal(chat(tools=tools)).param == "tools[0].function.parameters"


@pytest.mark.parametrize("body", [b"", b"{", b"[1, 2]", b'"text"', b"[" * 100_000, b"\xff"])
def test_a_body_that_is_no_json_object_is_400(body: bytes) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_json(body)

    assert (caught.value.status, caught.value.param) == (400, None)


def test_cache_modes() -> None:
    assert cache_mode(None) == pb.CACHE_MODE_UNSPECIFIED
    assert cache_mode("Refresh") == pb.CACHE_MODE_REFRESH
    assert cache_mode("disabled") == pb.CACHE_MODE_DISABLED
    with pytest.raises(OpenAIError) as caught:
        cache_mode("sometimes")
    assert caught.value.param == "X-Nexus-Cache"


# Embeddings.


def test_embedding_inputs() -> None:
    one = embedding_call({"model": "m", "input": "hello"})
    many = embedding_call(
        {"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 8}
    )

    assert (list(one.request.inputs), one.encoding_format, one.dimensions) == (
        ["hello"],
        "float",
        None,
    )
    assert (many.request.model, list(many.request.inputs)) == ("m", ["a", "b"])
    assert (many.encoding_format, many.dimensions) == ("base64", 8)


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": "x"}, "model", "missing_required_parameter"),
        ({"model": "m"}, "input", "missing_required_parameter"),
        ({"model": "m", "input": ""}, "input", "invalid_value"),
        ({"model": "m", "input": []}, "input", "empty_array"),
        ({"model": "m", "input": ["a", ""]}, "input[1]", "invalid_value"),
        ({"model": "m", "input": ["a", None]}, "input[1]", "invalid_type"),
        ({"model": "m", "input": [1, 2, 3]}, "input", "unsupported_parameter"),
        ({"model": "m", "input": [[1, 2]]}, "input", "unsupported_parameter"),
        ({"model": "m", "input": ["a"] * 2049}, "input", "invalid_value"),
        (
            {"model": "m", "input": "x", "encoding_format": "int8"},
            "encoding_format",
            "invalid_value",
        ),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
        ({"model": "m", "input": "x", "user": 1}, "user", "invalid_type"),
    ],
)
def test_bad_embedding_requests_are_400(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        embedding_call(body)

    assert (caught.value.status, caught.value.param, caught.value.code) == (400, param, code)
