"""Fixtures: a real llm service (gRPC on a free port, real NATS) serving a tiny local model that
the tests build themselves, and clients with real keys."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from llm_service_testing import LlmClient, StartLlm, write_config
from llm_testing import build_tiny_model

from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.llm.embeddings import LocalModel, load_local_model
from nexus.llm.server import create
from nexus.llm.settings import LlmSettings


@pytest.fixture(scope="session")
def local_model() -> LocalModel:
    """The local model, loaded once per test session (every EmbeddingModels then shares it)."""
    return load_local_model("cpu")


@pytest.fixture(scope="session")
def executor() -> Iterator[ThreadPoolExecutor]:
    """The service's executor, one per session as one per process in the service (torch warms
    up each new thread)."""
    pool = ThreadPoolExecutor(2, thread_name_prefix="test-llm")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal LM and tokenizer, built and trained here (nothing is downloaded)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def llm_config(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A model configuration serving the tiny model as `tiny` (priced, so budgets apply)."""
    return write_config(tmp_path / "models.yaml", tiny_model_dir)


@pytest.fixture
def start_llm(start_service: StartService, llm_config: Path, tmp_path: Path) -> StartLlm:
    """Starts llm service replicas (stopped at the end of the test)."""

    async def start(common: NexusSettings | None = None, **overrides: Any) -> ServiceHost:
        overrides.setdefault("config_path", llm_config)
        overrides.setdefault("model_cache_dir", tmp_path / "model-cache")
        return await start_service(create, LlmSettings(grpc_port=0, **overrides), common)

    return start


@pytest.fixture
async def llm(start_llm: StartLlm) -> ServiceHost:
    """One running llm service."""
    return await start_llm()


@pytest.fixture
async def admin_key(nexus_settings: NexusSettings) -> str:
    """A key with every scope."""
    return await make_key(nexus_settings, "*")


@pytest.fixture
async def client(llm: ServiceHost, admin_key: str) -> AsyncIterator[LlmClient]:
    """A client of the llm service with the admin key."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{llm.port}") as channel:
        yield LlmClient(channel, admin_key)
