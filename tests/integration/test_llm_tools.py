"""Tool calls end to end, with real parts only: the official `openai` client -> a Nexus gateway ->
its llm service -> litellm's OpenAI provider -> a second Nexus (gateway + llm service) on
loopback, serving the tools variant of the tiny local model, whose Hermes-format reply its local
provider turns into OpenAI tool calls. The client gets them, unary and streamed, sends the tool's
result back, and gets the model's answer.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from llm_service_testing import StartLlmStack
from llm_testing import TINY_MODEL_NAME, WEATHER_CALL, WEATHER_REPLY, WEATHER_TOOL, build_tiny_model
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key

pytestmark = pytest.mark.integration

UPSTREAM_KEY_ENV = "NEXUS_TEST_TOOLS_UPSTREAM_KEY"
TOOLS: list[ChatCompletionToolParam] = [WEATHER_TOOL]  # type: ignore[list-item]


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def question() -> list[ChatCompletionMessageParam]:
    """A user message no other test sent."""
    return [{"role": "user", "content": f"what is the weather {uuid.uuid4().hex[:6]}"}]


@pytest.fixture(scope="module")
def tools_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tools variant of the tiny model (built here; nothing is downloaded)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-tools"), tools=True)


@pytest.fixture
async def client(
    start_llm_stack: StartLlmStack,
    tools_model: Path,
    tmp_path: Path,
    nexus_settings: NexusSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> openai.AsyncOpenAI:
    """An OpenAI client of the front Nexus, whose one model is the upstream Nexus's local model
    reached through litellm's OpenAI provider (the upstream's key in the environment)."""
    upstream = await start_llm_stack(
        write_yaml(
            tmp_path / "upstream.yaml",
            {
                "local_models": {TINY_MODEL_NAME: {"path": str(tools_model)}},
                "model_list": [
                    {
                        "model_name": TINY_MODEL_NAME,
                        "litellm_params": {"model": f"nexus-local/{TINY_MODEL_NAME}"},
                    }
                ],
            },
        )
    )
    monkeypatch.setenv(UPSTREAM_KEY_ENV, await make_key(nexus_settings, "llm:invoke"))
    remote = {
        "model_name": "remote-tiny",
        "litellm_params": {
            "model": f"openai/{TINY_MODEL_NAME}",
            "api_base": f"{upstream.url}/v1",
            "api_key": f"os.environ/{UPSTREAM_KEY_ENV}",
        },
    }
    front = await start_llm_stack(
        write_yaml(
            tmp_path / "front.yaml",
            {"model_list": [remote], "router_settings": {"num_retries": 0}},
        )
    )
    key = await make_key(nexus_settings, "llm:invoke")
    return openai.AsyncOpenAI(base_url=f"{front.url}/v1", api_key=key, max_retries=0)


async def test_a_tool_call_reaches_the_client_and_its_result_gets_an_answer(
    client: openai.AsyncOpenAI,
) -> None:
    messages = question()
    reply = await client.chat.completions.create(
        model="remote-tiny", messages=messages, tools=TOOLS
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == WEATHER_CALL["name"]  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == WEATHER_CALL["arguments"]  # type: ignore[union-attr]

    follow_up: list[ChatCompletionMessageParam] = [
        *messages,
        choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    answer = await client.chat.completions.create(
        model="remote-tiny", messages=follow_up, tools=TOOLS
    )
    assert answer.choices[0].message.content == WEATHER_REPLY
    assert answer.choices[0].finish_reason == "stop"
    assert not answer.choices[0].message.tool_calls


async def test_a_streamed_tool_call_arrives_as_delta_tool_calls(
    client: openai.AsyncOpenAI,
) -> None:
    messages = question()
    stream = await client.chat.completions.create(
        model="remote-tiny", messages=messages, tools=TOOLS, stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    text, finish = "", None
    async for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for part in delta.tool_calls or []:
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += part.id or ""
            call["name"] += (part.function.name if part.function else None) or ""
            call["arguments"] += (part.function.arguments if part.function else None) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert text == ""
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == WEATHER_CALL["name"]
    assert json.loads(calls[0]["arguments"]) == WEATHER_CALL["arguments"]

    follow_up: list[ChatCompletionMessageParam] = [
        *messages,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[0]["id"],
                    "type": "function",
                    "function": {"name": calls[0]["name"], "arguments": calls[0]["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
    ]
    answer = await client.chat.completions.create(
        model="remote-tiny", messages=follow_up, tools=TOOLS, stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in answer if c.choices]
    assert "".join(pieces) == WEATHER_REPLY
