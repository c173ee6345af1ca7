"""EmbeddingModels with the real local model (all-MiniLM-L6-v2 from its package, on the CPU)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from nexus.common.errors import (
    REQUEST_TOO_LARGE,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from nexus.llm.embeddings import (
    LOCAL_MODEL,
    LOCAL_PROVIDER,
    EmbeddingModels,
    LocalModel,
)
from nexus.llm.settings import LlmSettings

StartModels = Callable[..., Coroutine[Any, Any, EmbeddingModels]]


@pytest.fixture
async def start_models(
    local_model: LocalModel, executor: ThreadPoolExecutor
) -> AsyncIterator[StartModels]:
    """Starts EmbeddingModels with setting overrides (stopped at the end of the test)."""
    started: list[EmbeddingModels] = []

    async def start(**overrides: Any) -> EmbeddingModels:
        models = EmbeddingModels(LlmSettings(device="cpu", **overrides), executor)
        await models.start()
        started.append(models)
        return models

    yield start
    for models in started:
        await models.stop()


@pytest.fixture
async def models(start_models: StartModels) -> EmbeddingModels:
    """Embedding models with the default limits."""
    return await start_models()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


async def test_vectors_are_float32_unit_rows_in_input_order(models: EmbeddingModels) -> None:
    texts = ["a cat sat on the mat", "quarterly revenue rose", "a kitten is on the rug"]

    result = await models.embed("", texts)

    assert result.model == LOCAL_MODEL
    assert result.vectors.dtype == np.float32
    assert result.vectors.shape == (3, 384)
    assert result.dimensions == 384
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    alone = await models.embed(LOCAL_MODEL, [texts[1]])
    np.testing.assert_allclose(alone.vectors[0], result.vectors[1], atol=1e-5)


async def test_similar_meanings_are_nearer(models: EmbeddingModels) -> None:
    cat, kitten, revenue = (
        await models.embed(
            "", ["a cat sat on the mat", "a kitten is on the rug", "quarterly revenue rose"]
        )
    ).vectors

    assert cosine(cat, kitten) > cosine(cat, revenue) + 0.3


async def test_usage_counts_the_tokens_the_model_read_at_no_cost(models: EmbeddingModels) -> None:
    short = await models.embed("", ["hello", "a cat sat on the mat"])
    long = await models.embed("", ["word " * 1000])

    # [CLS] and [SEP] around 1 and 6 word pieces; a long text is cut at 256 tokens.
    assert short.usage.prompt_tokens == 3 + 8
    assert long.usage.prompt_tokens == 256
    assert short.usage.completion_tokens == 0
    assert short.usage.cost_usd == 0.0


async def test_concurrent_callers_each_get_their_own_vectors(models: EmbeddingModels) -> None:
    texts = [[f"text number {i}", f"another sentence {i * 7}"] for i in range(8)]
    expected = [await models.embed("", pair) for pair in texts]

    results = await asyncio.gather(*(models.embed("", pair) for pair in texts))

    for result, alone in zip(results, expected, strict=True):
        np.testing.assert_allclose(result.vectors, alone.vectors, atol=1e-4)
        assert result.usage == alone.usage


async def test_names_and_dimensions(models: EmbeddingModels) -> None:
    assert models.names() == {LOCAL_MODEL: 384}
    assert models.default_model == LOCAL_MODEL
    assert models.dimensions("") == 384
    assert models.dimensions(LOCAL_MODEL) == 384
    assert models.resolve("") == LOCAL_MODEL
    assert models.provider_of("") == LOCAL_PROVIDER
    assert await models.measure_dimensions("") == 384
    [local] = models.local_descriptions()
    assert (local.name, local.kind, local.providers) == (
        LOCAL_MODEL,
        "embedding",
        (LOCAL_PROVIDER,),
    )
    assert (local.dimensions, local.context_window) == (384, 256)


async def test_router_models_are_listed_beside_the_local_one(
    models: EmbeddingModels, executor: ThreadPoolExecutor
) -> None:
    # The router's embed is wired by server.py; here it is never called (its dims are known or
    # reported as 0), so any embed function serves.
    both = EmbeddingModels(
        LlmSettings(device="cpu"),
        executor,
        provider_embed=models.embed,
        provider_models={"text-embedding-3-small": 1536, "unsized": 0},
    )
    await both.start()
    try:
        assert both.names() == {LOCAL_MODEL: 384, "text-embedding-3-small": 1536, "unsized": 0}
        assert both.dimensions("text-embedding-3-small") == 1536
        assert both.dimensions("unsized") == 0
        assert both.provider_of("unsized") == "router"
    finally:
        await both.stop()


async def test_an_unknown_model_is_not_found_naming_the_known_ones(
    models: EmbeddingModels,
) -> None:
    with pytest.raises(NotFound, match=LOCAL_MODEL):
        await models.embed("no-such-model", ["text"])
    with pytest.raises(NotFound):
        models.dimensions("no-such-model")


@pytest.mark.parametrize(
    ("texts", "field"),
    [([], "inputs"), ("one string", "inputs"), (["fine", ""], "inputs[1]"), ([3], "inputs[0]")],
)
async def test_bad_inputs_are_invalid(models: EmbeddingModels, texts: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await models.embed("", texts)

    assert caught.value.violations[0].field == field


async def test_too_many_inputs_are_too_large(start_models: StartModels) -> None:
    models = await start_models(max_embed_inputs=3)

    with pytest.raises(ResourceExhausted) as caught:
        await models.embed("", ["a", "b", "c", "d"])

    assert caught.value.reason == REQUEST_TOO_LARGE
    assert (await models.embed("", ["a", "b", "c"])).vectors.shape == (3, 384)


async def test_a_text_too_long_is_too_large(start_models: StartModels) -> None:
    models = await start_models(max_input_chars=20)

    with pytest.raises(ResourceExhausted, match=r"inputs\[1\]") as caught:
        await models.embed("", ["short", "x" * 21])

    assert caught.value.reason == REQUEST_TOO_LARGE
    assert (await models.embed("", ["x" * 20])).vectors.shape == (1, 384)


async def test_embedding_before_start_fails(executor: ThreadPoolExecutor) -> None:
    models = EmbeddingModels(LlmSettings(device="cpu"), executor)

    assert models.names() == {LOCAL_MODEL: 0}
    with pytest.raises(FailedPrecondition):
        await models.embed("", ["text"])


def test_misconfigurations_are_refused(executor: ThreadPoolExecutor) -> None:
    with pytest.raises(ValueError, match="provider_embed"):
        EmbeddingModels(LlmSettings(), executor, provider_models={"text-embedding-3-small": 0})
    with pytest.raises(ValueError, match="default_embedding_model"):
        EmbeddingModels(LlmSettings(default_embedding_model="nothing"), executor)
