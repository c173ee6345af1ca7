"""OpenAI request bodies -> the llm service's messages, and OpenAI's validation of them."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.gateway.openai.errors import OpenAIError
from nexus.gateway.openai.requests import (
    MAX_DEPTH,
    cache_mode,
    chat_completion_call,
    embedding_call,
    parse_json,
)

USER = {"role": "user", "content": "Hello"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [USER], **fields}


def raw_of(request: Any) -> dict[str, Any]:
    """What travels as OpenAI JSON in `openai_parameters`."""
    return json_format.MessageToDict(request.openai_parameters)


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


def test_parameters_without_a_field_travel_as_json() -> None:
    fields = {
        "store": False,
        "metadata": {"a": "b"},
        "parallel_tool_calls": True,
        "service_tier": "auto",
        "max_completion_tokens": 5,
        "top_k": 3,
    }
    request = chat_completion_call(chat(max_tokens=100, **fields)).request

    assert raw_of(request) == fields
    assert (request.max_tokens, request.messages[0].content) == (100, "Hello")


def test_stream_and_stream_options_travel_for_the_service_to_check() -> None:
    call = chat_completion_call(chat(stream=True, stream_options={"include_usage": True}))

    assert raw_of(call.request) == {"stream": True, "stream_options": {"include_usage": True}}


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
    assert not chat_completion_call(chat(stream="yes")).stream
    assert not chat_completion_call(chat(stream_options={"include_usage": True})).include_usage


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
    "fields",
    [
        {"model": None},
        {"model": 3},
        {"messages": None},
        {"messages": []},
        {"messages": "hi"},
        {"messages": ["hi"]},
        {"messages": [{"role": "function", "content": "x", "name": "f"}]},
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": None}]},
        {"messages": [{"role": "user", "content": []}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "refusal", "refusal": "x"}]}]},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x", "name": 1}]},
        {"messages": [{"role": "user", "content": "x", "audio": None}]},
        {"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}]},
        {"messages": [{"content": "x"}]},
        {"temperature": "hot"},
        {"temperature": True},
        {"temperature": 1e400},
        {"max_tokens": 1.5},
        {"max_tokens": 2**31},
        {"seed": "1"},
        {"seed": 2**63},
        {"stop": [1]},
        {"stop": []},
        {"stop": 7},
        {"user": None},
        {"user": 42},
        {"tools": None},
        {"tools": {}},
        {"tools": [{"type": "custom", "custom": {"name": "f"}}]},
        {"tools": [{"type": "function", "function": {}}]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
        {"tools": [{"type": "function", "function": {"name": "f", "strict": 1}}]},
        {"tools": [{"type": "function", "function": {"name": "f", "description": None}}]},
        {"tool_choice": None},
        {"tool_choice": "sometimes"},
        {"tool_choice": {"type": "function", "function": {"name": "auto"}}},
        {"response_format": None},
        {"response_format": {"type": "xml"}},
        {"response_format": {"type": "json_schema"}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        {"response_format": {"type": "text", "json_schema": {}}},
    ],
)
def test_a_value_its_field_cannot_hold_exactly_travels_as_json(fields: dict[str, Any]) -> None:
    """The service judges it (and refuses every one of these, naming the parameter)."""
    body = chat(**fields)
    request = chat_completion_call(body).request
    name = next(iter(fields))

    assert name in request.openai_parameters.fields
    if name == "messages":
        assert not request.messages
    if name == "tools":
        assert not request.tools


def test_a_number_too_large_for_a_double_travels_as_an_infinity() -> None:
    huge = 10**400
    body = chat(temperature=huge, logit_bias={"1": -huge}, n=10**20)
    request = chat_completion_call(body).request
    raw = request.openai_parameters

    assert raw["temperature"] == float("inf")
    assert raw["logit_bias"]["1"] == float("-inf")
    assert raw["n"] == float("inf")  # beyond 64 bits: no integer of OpenAI's holds it
    assert not request.HasField("temperature")


def test_values_nested_too_deeply_to_travel_are_400() -> None:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(MAX_DEPTH):
        deep = {"type": "object", "properties": {"x": deep}}

    with pytest.raises(OpenAIError) as caught:
        chat_completion_call(chat(metadata=deep))
    tools = [{"type": "function", "function": {"name": "f", "parameters": deep}}]
    with pytest.raises(OpenAIError) as in_tools:
        chat_completion_call(chat(tools=tools))

    assert (caught.value.status, caught.value.param) == (400, "metadata")
    assert (in_tools.value.status, in_tools.value.param) == (400, "tools")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[1, 2]",
        b'"text"',
        b"[" * 100_000,
        b"\xff",
        b'{"temperature": NaN}',
        b'{"a": -Infinity}',
    ],
)
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

    assert (list(one.request.inputs), one.encoding_format, raw_of(one.request)) == (
        ["hello"],
        "float",
        {},
    )
    assert (many.request.model, list(many.request.inputs)) == ("m", ["a", "b"])
    assert many.encoding_format == "base64"
    assert raw_of(many.request) == {"encoding_format": "base64", "dimensions": 8}


@pytest.mark.parametrize(
    "body",
    [
        {"model": None, "input": "x"},
        {"model": "m", "input": None},
        {"model": "m", "input": ""},
        {"model": "m", "input": []},
        {"model": "m", "input": ["a", ""]},
        {"model": "m", "input": ["a", None]},
        {"model": "m", "input": [1, 2, 3]},
        {"model": "m", "input": [[1, 2]]},
        {"model": "m", "input": ["a"] * 2049},
    ],
)
def test_embedding_values_the_request_cannot_hold_travel_as_json(body: dict[str, Any]) -> None:
    call = embedding_call(body)
    name = "model" if body["model"] is None else "input"

    assert name in raw_of(call.request)
    assert not call.request.inputs or name == "model"


def test_an_encoding_format_the_service_refuses_renders_as_float() -> None:
    call = embedding_call({"model": "m", "input": "x", "encoding_format": "int8"})

    assert (call.encoding_format, raw_of(call.request)) == ("float", {"encoding_format": "int8"})
