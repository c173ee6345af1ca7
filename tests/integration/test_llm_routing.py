"""litellm's router in front of real OpenAI-compatible servers: a second Nexus (gateway + llm
service + the tiny local model) is the upstream, reached over loopback HTTP like any provider."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from llm_service_testing import StartLlmStack
from llm_testing import TINY_MODEL_NAME, counting
from prometheus_client import REGISTRY

from nexus.common.natsserver import free_port
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key

pytestmark = pytest.mark.integration

UPSTREAM_KEY_ENV = "NEXUS_TEST_UPSTREAM_KEY"
LONG_CONTEXT = 16_384


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def upstream_config(path: Path, model_dir: Path) -> Path:
    """The upstream Nexus: the tiny model, with a long context so that a generation can run for
    seconds (its rotary positions extend past the trained length)."""
    return write_yaml(
        path,
        {
            "local_models": {
                TINY_MODEL_NAME: {"path": str(model_dir), "context_window": LONG_CONTEXT}
            },
            "model_list": [
                {"model_name": TINY_MODEL_NAME, "litellm_params": {"model": "nexus-local/tiny"}}
            ],
        },
    )


def remote(name: str, base: str, *, key_env: str = UPSTREAM_KEY_ENV) -> dict[str, Any]:
    """A deployment of the upstream's tiny model through litellm's OpenAI provider."""
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"openai/{TINY_MODEL_NAME}",
            "api_base": f"{base}/v1",
            "api_key": f"os.environ/{key_env}",
        },
        "model_info": {"max_input_tokens": LONG_CONTEXT},
    }


def prompt() -> list[dict[str, str]]:
    """A user message no other test sent (the response cache is shared)."""
    return [{"role": "user", "content": f"hello {uuid.uuid4().hex[:6]}"}]


@pytest.fixture
async def upstream(
    start_llm_stack: StartLlmStack,
    tiny_model: Path,
    tmp_path: Path,
    nexus_settings: NexusSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """The upstream Nexus's gateway URL; its key is in the environment, as a provider key is."""
    stack = await start_llm_stack(upstream_config(tmp_path / "upstream.yaml", tiny_model))
    monkeypatch.setenv(UPSTREAM_KEY_ENV, await make_key(nexus_settings, "llm:invoke"))
    return stack.url


async def front(
    start_llm_stack: StartLlmStack, tmp_path: Path, deployments: list[dict[str, Any]], **router: Any
) -> openai.AsyncOpenAI:
    """A Nexus whose router has `deployments`; an OpenAI client of its gateway (auth off for
    the client side: the test is about the provider side)."""
    config = {"model_list": deployments, "router_settings": {"num_retries": 0, **router}}
    stack = await start_llm_stack(
        write_yaml(tmp_path / f"front-{uuid.uuid4().hex[:6]}.yaml", config)
    )
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)


async def test_router_reaches_an_openai_compatible_server(
    start_llm_stack: StartLlmStack, upstream: str, tmp_path: Path, nexus_settings: NexusSettings
) -> None:
    client = await front(start_llm_stack, tmp_path, [remote("remote-tiny", upstream)])
    client.api_key = await make_key(nexus_settings, "llm:invoke")
    reply = await client.chat.completions.create(
        model="remote-tiny",
        messages=prompt(),
        max_tokens=4,  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == counting(4)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 4

    stream = await client.chat.completions.create(
        model="remote-tiny",
        messages=prompt(),
        max_tokens=5,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.strip() == counting(5)


async def test_router_falls_back_when_the_first_deployment_is_down(
    start_llm_stack: StartLlmStack, upstream: str, tmp_path: Path, nexus_settings: NexusSettings
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = await front(
        start_llm_stack,
        tmp_path,
        [remote("primary", dead), remote("backup", upstream)],
        fallbacks=[{"primary": ["backup"]}],
    )
    client.api_key = await make_key(nexus_settings, "llm:invoke")
    for _ in range(2):  # the second call finds the primary cooling down, or fails over again
        reply = await client.chat.completions.create(
            model="primary",
            messages=prompt(),
            max_tokens=3,  # type: ignore[arg-type]
        )
        assert reply.choices[0].message.content == counting(3)
    stream = await client.chat.completions.create(
        model="primary",
        messages=prompt(),
        max_tokens=3,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.strip() == counting(3)


async def test_a_provider_key_never_appears_in_errors_or_logs(
    start_llm_stack: StartLlmStack,
    upstream: str,
    tmp_path: Path,
    nexus_settings: NexusSettings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = f"nxk_{uuid.uuid4().hex[:12]}_{uuid.uuid4().hex}"  # well formed, unknown
    monkeypatch.setenv("NEXUS_TEST_WRONG_KEY", secret)
    client = await front(
        start_llm_stack, tmp_path, [remote("bad-key", upstream, key_env="NEXUS_TEST_WRONG_KEY")]
    )
    client.api_key = await make_key(nexus_settings, "llm:invoke")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(
            model="bad-key",
            messages=prompt(),
            max_tokens=2,  # type: ignore[arg-type]
        )
    assert caught.value.status_code == 400  # the upstream refused the deployment's key
    assert secret not in caught.value.response.text
    assert secret not in caplog.text


def tokens_generated() -> float:
    return (
        REGISTRY.get_sample_value("nexus_llm_local_tokens_total", {"model": TINY_MODEL_NAME}) or 0.0
    )


def active_generations() -> float:
    value = REGISTRY.get_sample_value(
        "nexus_llm_local_active_generations", {"model": TINY_MODEL_NAME}
    )
    return value or 0.0


async def test_a_cancelled_stream_stops_generation_upstream(
    start_llm_stack: StartLlmStack, upstream: str, tmp_path: Path, nexus_settings: NexusSettings
) -> None:
    client = await front(start_llm_stack, tmp_path, [remote("remote-tiny", upstream)])
    client.api_key = await make_key(nexus_settings, "llm:invoke")
    before = tokens_generated()
    stream = await client.chat.completions.create(
        model="remote-tiny",
        messages=prompt(),
        max_tokens=LONG_CONTEXT - 64,
        stream=True,  # type: ignore[arg-type]
    )
    received = 0
    async for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received >= 3:
            break
    await stream.close()  # the client goes away: front gateway -> front llm -> upstream -> model

    for _ in range(100):
        if active_generations() == 0:
            break
        await asyncio.sleep(0.05)
    assert active_generations() == 0
    stopped_at = tokens_generated()
    await asyncio.sleep(0.5)
    assert tokens_generated() == stopped_at  # nothing generates any more
    assert stopped_at - before < (LONG_CONTEXT - 64) / 2  # it stopped early, far from the end


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "tiny", "messages": []}, 400, "messages"),
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "hello " * 2_000}]},
            400,
            None,
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            400,
            "temperature",
        ),
    ],
)
async def test_bad_chat_input_is_a_clear_400_class_error(
    start_llm_stack: StartLlmStack,
    tiny_model: Path,
    tmp_path: Path,
    nexus_settings: NexusSettings,
    body: dict[str, Any],
    status: int,
    param: str | None,
) -> None:
    config = write_yaml(
        tmp_path / "tiny.yaml",
        {
            "local_models": {"tiny": {"path": str(tiny_model)}},
            "model_list": [{"model_name": "tiny", "litellm_params": {"model": "nexus-local/tiny"}}],
        },
    )
    stack = await start_llm_stack(config, max_body_bytes=64 * 1024)
    headers = {"Authorization": f"Bearer {await make_key(nexus_settings, 'llm:invoke')}"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, timeout=30) as http:
        reply = await http.post("/v1/chat/completions", json=body)
        oversized = await http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "x" * 100_000}]},
        )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    else:
        assert error["code"] == "context_length_exceeded"
    assert oversized.status_code == 413
