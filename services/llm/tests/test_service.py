"""The llm service over real gRPC: chat, streaming, cache, conversations, budgets, usage,
embeddings, analysis and bad input, with the tiny local model behind the router."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llm_service_testing import (
    INPUT_PRICE,
    OUTPUT_PRICE,
    LlmClient,
    StartLlm,
    chat,
    user,
    write_config,
)
from llm_testing import EXTRACT_SCHEMA, EXTRACTED, build_tiny_model, counting

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.paging import every_page
from nexus.common.testing.status import field_of
from nexus.llm.converters import dict_to_struct, struct_to_dict
from nexus.llm.local import FRAMEWORK, pack_model_dir


def reason_of(err: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


async def test_chat_answers_with_usage_and_cost(client: LlmClient) -> None:
    reply = await client.llm.Chat(chat("hi", max_tokens=5), metadata=client.metadata)
    assert reply.message.role == "assistant"
    assert reply.message.content == counting(5)
    assert reply.provider == "nexus-local"
    assert reply.finish_reason == "length"
    assert reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens > 0
    expected = reply.usage.prompt_tokens * INPUT_PRICE + 5 * OUTPUT_PRICE
    assert reply.usage.cost_usd == pytest.approx(expected)
    assert not reply.cached


async def test_stream_yields_tokens_then_usage(client: LlmClient) -> None:
    request = pb.StreamChatRequest(request=chat("count", max_tokens=6))
    chunks = [c async for c in client.llm.StreamChat(request, metadata=client.metadata)]
    assert chunks[0].role == "assistant"
    assert len([c for c in chunks if c.content]) >= 3
    assert "".join(c.content for c in chunks).strip() == counting(6)
    last = chunks[-1]
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == 6
    assert len({c.id for c in chunks}) == 1


async def test_identical_request_is_served_from_cache(client: LlmClient) -> None:
    request = chat("cache me please", max_tokens=4, seed=7)
    first = await client.llm.Chat(request, metadata=client.metadata)
    second = await client.llm.Chat(request, metadata=client.metadata)
    assert not first.cached
    assert second.cached
    assert second.message.content == first.message.content
    assert second.usage.cost_usd == 0
    other = await client.llm.Chat(chat("cache me please", max_tokens=3), metadata=client.metadata)
    assert not other.cached
    refresh = chat("cache me please", max_tokens=4, seed=7, cache_mode=pb.CACHE_MODE_REFRESH)
    assert not (await client.llm.Chat(refresh, metadata=client.metadata)).cached


async def test_cached_stream_is_replayed(client: LlmClient) -> None:
    await client.llm.Chat(chat("replay", max_tokens=3), metadata=client.metadata)
    request = pb.StreamChatRequest(request=chat("replay", max_tokens=3))
    chunks = [c async for c in client.llm.StreamChat(request, metadata=client.metadata)]
    assert all(c.cached for c in chunks)
    assert "".join(c.content for c in chunks) == counting(3)


async def test_conversation_keeps_history(client: LlmClient) -> None:
    created = await client.conversations.CreateConversation(
        pb.CreateConversationRequest(
            model="tiny", messages=[pb.ChatMessage(role="system", content="be brief")]
        ),
        metadata=client.metadata,
    )
    cid = created.conversation.id
    for text in ("first", "second"):
        reply = await client.llm.Chat(
            pb.ChatRequest(conversation_id=cid, messages=[user(text)], max_tokens=2),
            metadata=client.metadata,
        )
        assert reply.conversation_id == cid
    got = await client.conversations.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=client.metadata
    )
    roles = [m.role for m in got.conversation.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert got.conversation.messages[3].content == "second"


async def test_long_history_is_trimmed_to_the_context_window(client: LlmClient) -> None:
    words = " ".join(["hello"] * 200)
    history = [pb.ChatMessage(role="system", content="sys")]
    for _ in range(6):
        history += [user(words), pb.ChatMessage(role="assistant", content=words)]
    created = await client.conversations.CreateConversation(
        pb.CreateConversationRequest(model="tiny", messages=history), metadata=client.metadata
    )
    reply = await client.llm.Chat(
        pb.ChatRequest(
            conversation_id=created.conversation.id, messages=[user("hi")], max_tokens=2
        ),
        metadata=client.metadata,
    )
    assert reply.usage.prompt_tokens <= 512 - 2


async def test_budget_stops_a_key(
    llm: ServiceHost, nexus_settings: NexusSettings, client: LlmClient
) -> None:
    key = await make_key(nexus_settings, "llm:invoke")
    key_id = key.removeprefix("nxk_").split("_", 1)[0]
    await client.usage.SetBudget(
        pb.SetBudgetRequest(api_key_id=key_id, limit_usd=0.004), metadata=client.metadata
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{llm.port}") as channel:
        limited = LlmClient(channel, key)
        first = await limited.llm.Chat(chat("spend", max_tokens=2), metadata=limited.metadata)
        assert first.usage.cost_usd > 0
        budget = await limited.usage.GetBudget(pb.GetBudgetRequest(), metadata=limited.metadata)
        assert budget.budget.spent_usd == pytest.approx(first.usage.cost_usd)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await limited.llm.Chat(chat("spend more", max_tokens=20), metadata=limited.metadata)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_of(caught.value) == "BUDGET_EXCEEDED"
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await limited.usage.GetBudget(
                pb.GetBudgetRequest(api_key_id="someone-else"), metadata=limited.metadata
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_usage_totals_per_key_and_model(client: LlmClient, admin_key: str) -> None:
    await client.llm.Chat(chat("usage one", max_tokens=2), metadata=client.metadata)
    await client.llm.Chat(chat("usage one", max_tokens=2), metadata=client.metadata)  # cached
    await client.llm.Embed(pb.EmbedRequest(inputs=["x"]), metadata=client.metadata)
    usage = await client.usage.GetUsage(pb.GetUsageRequest(), metadata=client.metadata)
    rows = {(r.model, r.provider): r for r in usage.totals}
    tiny = rows[("tiny", "nexus-local")]
    assert tiny.requests == 2
    assert tiny.cached_requests == 1
    assert tiny.completion_tokens == 4
    assert tiny.cost_usd > 0
    assert rows[("all-minilm-l6-v2", "nexus-local")].requests == 1
    assert {r.api_key_id for r in usage.totals} == {admin_key.removeprefix("nxk_").split("_")[0]}


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (pb.ChatRequest(model="tiny"), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        (chat(model="nope"), grpc.StatusCode.NOT_FOUND, ""),
        (chat(temperature=3.0), grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        (chat(max_tokens=10**6), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (
            pb.ChatRequest(model="tiny", messages=[pb.ChatMessage(role="wizard", content="x")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "messages[0].role",
        ),
        (chat(stop=["a", "b", "c", "d", "e"]), grpc.StatusCode.INVALID_ARGUMENT, "stop"),
    ],
)
async def test_bad_chat_requests_are_refused(
    client: LlmClient, request_: pb.ChatRequest, code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.llm.Chat(request_, metadata=client.metadata)
    assert caught.value.code() == code
    assert field in (caught.value.details() or "")


async def test_openai_parameters_without_a_field_are_checked_and_used(client: LlmClient) -> None:
    """Native clients reach OpenAI's parameters through `openai_parameters` (ADR 0018)."""
    extra = dict_to_struct({"reasoning_effort": "low", "metadata": {"team": "search"}})
    reply = await client.llm.Chat(chat(openai_parameters=extra), metadata=client.metadata)
    assert reply.usage.completion_tokens == 8

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await client.llm.Chat(
            chat(openai_parameters=dict_to_struct({"reasoning_effort": "extreme"})),
            metadata=client.metadata,
        )
    with pytest.raises(grpc.aio.AioRpcError) as unknown_model:
        await client.llm.Chat(
            chat(model="nope", openai_parameters=dict_to_struct({"top_k": 1})),
            metadata=client.metadata,
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (field_of(bad.value), reason_of(bad.value)) == ("reasoning_effort", "INVALID_VALUE")
    assert unknown_model.value.code() == grpc.StatusCode.NOT_FOUND


async def test_prompt_over_the_context_window_is_refused(client: LlmClient) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.llm.Chat(chat(" ".join(["hello"] * 2000)), metadata=client.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "CONTEXT_WINDOW_EXCEEDED"


async def test_embed_with_the_local_default(client: LlmClient) -> None:
    reply = await client.llm.Embed(
        pb.EmbedRequest(inputs=["a cat", "a dog"]), metadata=client.metadata
    )
    assert reply.dimensions == 384
    assert len(reply.embeddings) == 2
    assert reply.model == "all-minilm-l6-v2"


async def test_list_models(client: LlmClient) -> None:
    reply = await client.llm.ListModels(pb.ListModelsRequest(), metadata=client.metadata)
    kinds = {m.id: m.kind for m in reply.models}
    assert kinds["tiny"] == pb.ModelInfo.KIND_CHAT
    assert kinds["all-minilm-l6-v2"] == pb.ModelInfo.KIND_EMBEDDING
    tiny = next(m for m in reply.models if m.id == "tiny")
    assert tiny.context_window == 512
    assert list(tiny.providers) == ["nexus-local"]


async def test_list_models_pages(client: LlmClient) -> None:
    async def page(token: str) -> tuple[list[str], str]:
        request = pb.ListModelsRequest(page_size=1, page_token=token)
        reply = await client.llm.ListModels(request, metadata=client.metadata)
        return [m.id for m in reply.models], reply.next_page_token

    everything = await client.llm.ListModels(pb.ListModelsRequest(), metadata=client.metadata)
    pages = await every_page(page)
    assert [len(p) for p in pages] == [1] * len(everything.models)
    listed = [model for page in pages for model in page]
    assert listed == [m.id for m in everything.models] == sorted(listed)


async def test_list_collections_pages(client: LlmClient) -> None:
    names = sorted(f"paged-{uuid.uuid4().hex[:8]}" for _ in range(3))
    for name in names:
        request = pb.CreateCollectionRequest(name=name)
        await client.search.CreateCollection(request, metadata=client.metadata)

    async def page(token: str) -> tuple[list[str], str]:
        request = pb.ListCollectionsRequest(page_size=2, page_token=token)
        reply = await client.search.ListCollections(request, metadata=client.metadata)
        return [c.name for c in reply.collections], reply.next_page_token

    listed = [name for page in await every_page(page) for name in page]
    assert listed == sorted(set(listed))
    assert set(names) <= set(listed)
    bad = pb.ListCollectionsRequest(page_token="garbage")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.search.ListCollections(bad, metadata=client.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_sentiment(client: LlmClient) -> None:
    reply = await client.llm.AnalyzeSentiment(
        pb.AnalyzeSentimentRequest(texts=["I love this!", "This is terrible."]),
        metadata=client.metadata,
    )
    assert [r.label for r in reply.results] == ["positive", "negative"]


async def test_second_replica_reads_what_the_first_wrote(
    start_llm: StartLlm, client: LlmClient, admin_key: str
) -> None:
    await client.search.CreateCollection(
        pb.CreateCollectionRequest(name="faq"), metadata=client.metadata
    )
    await client.search.UpsertDocuments(
        pb.UpsertDocumentsRequest(
            collection="faq",
            documents=[
                pb.Document(id="1", text="How do I reset my password?"),
                pb.Document(id="2", text="Our office opens at nine."),
            ],
        ),
        metadata=client.metadata,
    )
    other = await start_llm()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
        second = LlmClient(channel, admin_key)
        hits = await second.search.Search(
            pb.SearchRequest(collection="faq", query="forgot my password", top_k=1),
            metadata=second.metadata,
        )
    assert [h.document.id for h in hits.hits] == ["1"]


async def test_extract_returns_data_valid_against_the_schema(
    start_llm: StartLlm, tmp_path: Path, admin_key: str
) -> None:
    model = build_tiny_model(tmp_path / "extractor", extraction=True)
    host = await start_llm(config_path=write_config(tmp_path / "x.yaml", model))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        client = LlmClient(channel, admin_key)
        reply = await client.llm.Extract(
            pb.ExtractRequest(
                model="tiny",
                text="Ada Lovelace died at 36.",
                json_schema=dict_to_struct(EXTRACT_SCHEMA),
            ),
            metadata=client.metadata,
        )
        assert struct_to_dict(reply.data) == json.loads(EXTRACTED)
        assert reply.usage.completion_tokens > 0

        stricter = {**EXTRACT_SCHEMA, "required": ["name", "age", "email"]}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.llm.Extract(
                pb.ExtractRequest(model="tiny", text="x", json_schema=dict_to_struct(stricter)),
                metadata=client.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(caught.value) == "EXTRACTION_INVALID"

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await client.llm.Extract(
                pb.ExtractRequest(
                    model="tiny", text="x", json_schema=dict_to_struct({"type": "nonsense"})
                ),
                metadata=client.metadata,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_local_model_from_the_registry(
    client: LlmClient, start_llm: StartLlm, tiny_model_dir: Path, tmp_path: Path, admin_key: str
) -> None:
    uploaded = await client.models.UploadModel(
        models_pb.UploadModelRequest(
            service="llm",
            name="tiny-lm",
            framework=FRAMEWORK,
            artifact=pack_model_dir(tiny_model_dir),
        ),
        metadata=client.metadata,
    )
    await client.models.PromoteModel(
        models_pb.PromoteModelRequest(
            service="llm", name="tiny-lm", version=uploaded.version.version, alias="production"
        ),
        metadata=client.metadata,
    )
    config = tmp_path / "registry.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "local_models": {"assistant": {"registry": "tiny-lm"}},
                "model_list": [
                    {
                        "model_name": "assistant",
                        "litellm_params": {"model": "nexus-local/assistant"},
                    }
                ],
            }
        )
    )
    host = await start_llm(config_path=config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        other = LlmClient(channel, admin_key)
        reply = await other.llm.Chat(chat(model="assistant", max_tokens=3), metadata=other.metadata)
    assert reply.message.content == counting(3)


async def test_semantic_cache_serves_a_paraphrase(start_llm: StartLlm, admin_key: str) -> None:
    host = await start_llm(semantic_cache_threshold=0.85)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
        client = LlmClient(channel, admin_key)
        first = await client.llm.Chat(
            chat("What is the capital city of France?", max_tokens=3), metadata=client.metadata
        )
        paraphrase = await client.llm.Chat(
            chat("what's the capital of France", max_tokens=3), metadata=client.metadata
        )
        unrelated = await client.llm.Chat(
            chat("How do I bake sourdough bread?", max_tokens=3), metadata=client.metadata
        )
    assert not first.cached
    assert paraphrase.cached
    assert paraphrase.message.content == first.message.content
    assert not unrelated.cached
