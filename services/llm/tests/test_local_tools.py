"""Tool calls of local models: the Hermes / Qwen format parsed into OpenAI tool calls, in whole
replies and in streams, through a real litellm Router with a "nexus-local" deployment.

The model is the tools variant of `llm_testing`'s tiny model: when the prompt lists tools it
answers `WEATHER_CALL_TEXT` (a call of get_weather for paris) and ends, and after a tool result
it answers `WEATHER_REPLY`; without tools it counts, like the plain tiny model.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_testing import (
    WEATHER_CALL,
    WEATHER_CALL_TEXT,
    WEATHER_REPLY,
    WEATHER_TOOL,
    build_tiny_model,
    counting,
)

from nexus.common.errors import InvalidArgument
from nexus.llm._litellm import litellm
from nexus.llm.local import (
    LocalModel,
    LocalModels,
    LocalModelSpec,
    local_model_id,
    register_provider,
)
from nexus.llm.local.provider import _ending
from nexus.llm.local.tool_calls import ToolCallSplitter, callable_tools, parse_tool_calls

HI = [{"role": "user", "content": "what is the weather"}]
ADD_TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
CALL_ID = re.compile(r"call_[0-9a-f]{24}")
WEATHER = frozenset({"get_weather"})


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Runs torch on one thread (see test_local.py: a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tools_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tools variant of the tiny model."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-tools"), tools=True)


@pytest.fixture(scope="session")
def tools_model(tools_dir: Path) -> LocalModel:
    """The tools variant, loaded once."""
    return LocalModel.load(tools_dir, name="tiny", device="cpu")


@pytest.fixture
async def router(tools_dir: Path, tmp_path: Path) -> AsyncIterator[Any]:
    """A litellm Router with one "nexus-local" deployment on the tools variant."""
    models = LocalModels(
        [LocalModelSpec("tiny", path=tools_dir)],
        device="cpu",
        registry=None,
        cache_dir=tmp_path / "cache",
    )
    await models.start()
    register_provider(models)
    deployment = {"model_name": "tiny", "litellm_params": {"model": local_model_id(models, "tiny")}}
    yield litellm.Router(model_list=[deployment], num_retries=0)
    await models.stop()


def _call(name: str = "get_weather", arguments: str = '{"city": "paris"}') -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


def _checked_weather_call(call: Any) -> None:
    """`call` (a litellm tool call) is the tiny model's call of get_weather."""
    assert CALL_ID.fullmatch(call.id)
    assert call.type == "function"
    assert call.function.name == WEATHER_CALL["name"]
    assert json.loads(call.function.arguments) == WEATHER_CALL["arguments"]


# Parsing.


def test_the_tools_variant_answers_exactly(tools_model: LocalModel) -> None:
    def text(messages: list[dict[str, Any]], **params: Any) -> tuple[str, str]:
        generation = tools_model.generate(messages, params, threading.Event())
        return "".join(generation), generation.finish_reason

    assert text(HI, tools=[WEATHER_TOOL]) == (WEATHER_CALL_TEXT, "stop")
    assert text(HI, max_tokens=5) == (counting(5), "length")


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        (_call(), [("get_weather", {"city": "paris"})]),
        (f"  \n{_call()}\n ", [("get_weather", {"city": "paris"})]),
        (
            f'{_call()}\n<tool_call>\n{{"name": "add", "arguments": {{}}}}\n</tool_call>',
            [("get_weather", {"city": "paris"}), ("add", {})],
        ),
        (_call(arguments='"{\\"city\\": \\"rome\\"}"'), [("get_weather", {"city": "rome"})]),
        ('<tool_call>{"name": "add"}</tool_call>', [("add", {})]),
    ],
)
def test_tool_calls_are_parsed(text: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    parsed = parse_tool_calls(text, frozenset({"get_weather", "add"}))
    assert parsed is not None
    assert [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed
    ] == calls
    assert all(c["type"] == "function" and CALL_ID.fullmatch(c["id"]) for c in parsed)
    assert len({c["id"] for c in parsed}) == len(parsed)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "the weather is nice",
        f"let me look: {_call()}",
        f"{_call()} and that is all",
        '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',  # bad JSON
        _call(name="get_time"),  # not an offered function
        _call(arguments="[1, 2]"),  # arguments not an object
        '<tool_call>["get_weather"]</tool_call>',
        _call()[: -len("</tool_call>")],  # never closed
        f"{_call()}\n{_call(name='nope')}",  # one bad call spoils the reply
    ],
)
def test_anything_else_is_text(text: str) -> None:
    assert parse_tool_calls(text, WEATHER) is None


def test_which_tools_may_be_called() -> None:
    tools = [WEATHER_TOOL, ADD_TOOL]
    assert callable_tools({}) is None
    assert callable_tools({"tools": []}) is None
    assert callable_tools({"tools": tools}) == {"get_weather", "add"}
    assert callable_tools({"tools": tools, "tool_choice": "auto"}) == {"get_weather", "add"}
    assert callable_tools({"tools": tools, "tool_choice": "required"}) == {"get_weather", "add"}
    assert callable_tools({"tools": tools, "tool_choice": "none"}) is None
    named = {"type": "function", "function": {"name": "add"}}
    assert callable_tools({"tools": tools, "tool_choice": named}) == {"add"}


def test_a_stream_holds_back_only_what_may_be_a_tool_call() -> None:
    text = ToolCallSplitter(WEATHER)
    assert [text.feed(p) for p in ("one", " two")] == ["one", " two"]  # passed on at once
    assert text.finish() == ("", None)

    almost = ToolCallSplitter(WEATHER)
    assert [almost.feed(p) for p in ("\n", "<tool", "s are")] == ["", "", "\n<tools are"]

    two = ToolCallSplitter(WEATHER)
    reply = f" {_call()}\n{_call(arguments='{}')}"
    assert [two.feed(c) for c in reply] == [""] * len(reply)  # held to the end
    held, calls = two.finish()
    assert held == ""
    assert calls is not None
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "paris"}, {}]

    malformed = ToolCallSplitter(WEATHER)
    assert malformed.feed(_call(name="nope")) == ""
    assert malformed.finish() == (_call(name="nope"), None)

    off = ToolCallSplitter(None)  # no tools, or tool_choice "none"
    assert off.feed(_call()) == _call()
    assert off.finish() == ("", None)


def test_a_stream_ends_with_one_chunk_per_call(tools_model: LocalModel) -> None:
    generation = tools_model.generate(HI, {"max_tokens": 2}, threading.Event())
    "".join(generation)
    splitter = ToolCallSplitter(WEATHER)
    splitter.feed(f"{_call()}\n{_call(arguments='{}')}")
    *calls, last = _ending(splitter, generation)
    assert [c["tool_use"]["index"] for c in calls] == [0, 1]
    assert [c["tool_use"]["function"]["arguments"] for c in calls] == ['{"city": "paris"}', "{}"]
    assert all(c["text"] == "" and not c["is_finished"] for c in calls)
    assert last["is_finished"]
    assert last["finish_reason"] == "tool_calls"
    assert last["usage"]["completion_tokens"] == 2


# Rendering.


def test_tool_calls_and_results_render_through_the_chat_template(
    tools_model: LocalModel,
) -> None:
    conversation = [
        *HI,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    text = tools_model._tokenizer.decode(tools_model.render(conversation, [WEATHER_TOOL]))
    assert f"<|assistant|>{WEATHER_CALL_TEXT}<|end|>" in text  # arguments as an object
    assert text.endswith("<|tool|>sunny<|end|>\n<|assistant|>")
    with pytest.raises(InvalidArgument, match=r"messages\[1\].tool_calls"):
        tools_model.render([*HI, {"role": "assistant", "content": "", "tool_calls": "x"}])


def test_the_fallback_template_shows_tools_and_calls(tools_dir: Path, tmp_path: Path) -> None:
    plain = build_tiny_model(tmp_path / "plain", tools=True)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config_path = plain / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    model = LocalModel.load(plain, name="plain", device="cpu")
    call = {"id": "c", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}
    conversation = [
        {"role": "user", "content": "add"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": "1"},
    ]
    text = model._tokenizer.decode(model.render(conversation, [ADD_TOOL]))
    assert text == (
        "<|bos|>system: You may call these tools: <tools>"
        f"{json.dumps([ADD_TOOL])}</tools>. To call one, answer "
        '<tool_call>{"name": <name>, "arguments": <object>}</tool_call>.\n'
        "user: add\n"
        'assistant: <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>\n'
        "tool: 1\n"
        "assistant:"
    )


# Through litellm's Router.


async def test_a_reply_that_calls_a_tool_is_tool_calls(router: Any) -> None:
    response = await router.acompletion(model="tiny", messages=HI, tools=[WEATHER_TOOL])
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    assert len(choice.message.tool_calls) == 1
    _checked_weather_call(choice.message.tool_calls[0])
    assert response.usage.completion_tokens > 0


async def test_a_streamed_tool_call_arrives_as_delta_tool_calls(router: Any) -> None:
    stream = await router.acompletion(
        model="tiny", messages=HI, tools=[WEATHER_TOOL], tool_choice="auto", stream=True
    )
    chunks = [chunk async for chunk in stream]
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1
    assert calls[0].index == 0
    _checked_weather_call(calls[0])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("params", "text", "finish"),
    [
        ({"tools": [WEATHER_TOOL], "tool_choice": "none"}, WEATHER_CALL_TEXT, "stop"),
        ({"tools": [ADD_TOOL]}, WEATHER_CALL_TEXT, "stop"),  # calls a function not offered
        (
            {
                "tools": [WEATHER_TOOL, ADD_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "add"}},
            },
            WEATHER_CALL_TEXT,
            "stop",
        ),
        ({"tools": [WEATHER_TOOL], "max_tokens": 4}, None, "length"),  # cut short: malformed
        ({"max_tokens": 4}, counting(4), "length"),  # no tools: counts, as without tools
    ],
)
async def test_other_replies_stay_text(
    router: Any, params: dict[str, Any], text: str | None, finish: str
) -> None:
    response = await router.acompletion(model="tiny", messages=HI, **params)
    choice = response.choices[0]
    assert not choice.message.tool_calls
    assert choice.finish_reason == finish
    content = choice.message.content
    assert content == text if text is not None else WEATHER_CALL_TEXT.startswith(content)

    stream = await router.acompletion(model="tiny", messages=HI, stream=True, **params)
    chunks = [chunk async for chunk in stream]
    assert not any(c.choices[0].delta.tool_calls for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
    assert chunks[-1].choices[0].finish_reason == finish


async def test_a_tool_result_gets_an_answer(router: Any) -> None:
    first = await router.acompletion(model="tiny", messages=HI, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    conversation = [
        *HI,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    response = await router.acompletion(model="tiny", messages=conversation, tools=[WEATHER_TOOL])
    assert response.choices[0].message.content == WEATHER_REPLY
    assert response.choices[0].finish_reason == "stop"


def test_the_synchronous_paths_parse_too(router: Any) -> None:
    response = router.completion(model="tiny", messages=HI, tools=[WEATHER_TOOL])
    assert response.choices[0].finish_reason == "tool_calls"
    _checked_weather_call(response.choices[0].message.tool_calls[0])
    chunks = list(router.completion(model="tiny", messages=HI, tools=[WEATHER_TOOL], stream=True))
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1
    _checked_weather_call(calls[0])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
