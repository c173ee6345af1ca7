"""Helpers for llm service tests: configuration files and stubs that send a key."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.api.llm.v1 import llm_service_pb2_grpc as pb_grpc
from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.common.server import ServiceHost


@dataclass(frozen=True)
class LlmStack:
    """An llm service and a gateway (with real auth) in front of it."""

    service: ServiceHost
    url: str


StartLlmStack = Callable[..., Coroutine[Any, Any, LlmStack]]
"""Starts an llm service behind its own gateway, from a models YAML and gateway overrides."""

StartLlm = Callable[..., Coroutine[Any, Any, ServiceHost]]
"""Starts an llm service replica with setting overrides (the `start_llm` fixture)."""

INPUT_PRICE = 1e-4
OUTPUT_PRICE = 2e-4


def write_config(path: Path, model_dir: Path, *, extra: list[dict[str, Any]] | None = None) -> Path:
    """A models YAML serving the tiny model at `model_dir` as `tiny`, priced per token."""
    config = {
        "local_models": {"tiny": {"path": str(model_dir)}},
        "model_list": [
            {
                "model_name": "tiny",
                "litellm_params": {"model": "nexus-local/tiny"},
                "model_info": {
                    "input_cost_per_token": INPUT_PRICE,
                    "output_cost_per_token": OUTPUT_PRICE,
                },
            },
            *(extra or []),
        ],
        "router_settings": {"num_retries": 0, "timeout": 30},
    }
    path.write_text(yaml.safe_dump(config))
    return path


class LlmClient:
    """Stubs on one channel, sending an API key with every call."""

    def __init__(self, channel: grpc.aio.Channel, key: str) -> None:
        self.llm = pb_grpc.LlmServiceStub(channel)
        self.conversations = pb_grpc.ConversationServiceStub(channel)
        self.search = pb_grpc.SearchServiceStub(channel)
        self.usage = pb_grpc.UsageServiceStub(channel)
        self.models = models_grpc.ModelRegistryServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {key}"),)


def user(text: str) -> pb.ChatMessage:
    """A user message."""
    return pb.ChatMessage(role="user", content=text)


def chat(text: str = "hello", **fields: Any) -> pb.ChatRequest:
    """A chat request to the tiny model."""
    fields.setdefault("model", "tiny")
    fields.setdefault("max_tokens", 8)
    return pb.ChatRequest(messages=[user(text)], **fields)
