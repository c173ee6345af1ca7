"""Builds the llm service: models, stores, engine and servicers on the shared host."""

from __future__ import annotations

import asyncio

import numpy as np

from nexus.api.llm.v1 import llm_service_pb2_grpc as pb_grpc
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.llm.analysis import SentimentAnalyzer
from nexus.llm.budgets import BudgetStore
from nexus.llm.cache import ResponseCache, SemanticCache
from nexus.llm.config import load_config
from nexus.llm.conversations import ConversationStore
from nexus.llm.embedding_path import EmbeddingPath
from nexus.llm.embeddings import EmbeddingModels
from nexus.llm.engine import ChatEngine
from nexus.llm.local import FRAMEWORK, LocalModels
from nexus.llm.router import ProviderRouter
from nexus.llm.search import CollectionStore
from nexus.llm.servicer import (
    ConversationServicer,
    LlmServicer,
    SearchServicer,
    UsageServicer,
)
from nexus.llm.settings import LlmSettings
from nexus.llm.usage import UsageLedger

NAME = "llm"


async def create(settings: LlmSettings, common: NexusSettings) -> ServiceHost:
    """Opens, wires and starts the service; it is SERVING when this returns."""
    config = load_config(settings.config_path)  # a bad file fails before anything starts
    host = ServiceHost(NAME, settings, common)
    await host.open()
    registry = await host.registry(upload_frameworks=[FRAMEWORK])
    local = await host.manage(
        LocalModels(
            config.local_models,
            device=settings.device,
            registry=registry,
            cache_dir=settings.model_cache_dir,
        )
    )
    router = ProviderRouter(config, local, timeout_s=settings.request_timeout_s)
    host.on_stop(lambda: asyncio.to_thread(router.close))
    js = host.nc.jetstream()
    embeddings = await host.manage(
        EmbeddingModels(
            settings,
            host.executor,
            provider_embed=router.embed,
            provider_models={
                m.name: m.dimensions for m in router.models() if m.kind == "embedding"
            },
        )
    )
    ledger = await host.manage(UsageLedger(host.bus, js, settings))
    budgets = await host.manage(BudgetStore(js))
    conversations = await host.manage(ConversationStore(js, settings))
    cache = await host.manage(ResponseCache(js, settings))
    collections = CollectionStore(host.nc, embeddings, settings)
    engine = ChatEngine(
        router,
        conversations,
        cache,
        _semantic_cache(settings, embeddings),
        ledger,
        budgets,
        settings,
    )
    host.add_servicer(
        pb_grpc.add_LlmServiceServicer_to_server,
        LlmServicer(
            engine,
            router,
            embeddings,
            EmbeddingPath(embeddings, router, ledger, budgets),
            SentimentAnalyzer(settings),
            settings,
        ),
        "nexus.llm.v1.LlmService",
    )
    host.add_servicer(
        pb_grpc.add_ConversationServiceServicer_to_server,
        ConversationServicer(conversations),
        "nexus.llm.v1.ConversationService",
    )
    host.add_servicer(
        pb_grpc.add_SearchServiceServicer_to_server,
        SearchServicer(collections),
        "nexus.llm.v1.SearchService",
    )
    host.add_servicer(
        pb_grpc.add_UsageServiceServicer_to_server,
        UsageServicer(ledger, budgets),
        "nexus.llm.v1.UsageService",
    )
    await host.start()
    await host.manage(collections)
    host.on_stop(engine.drain)
    await host.set_serving()
    return host


def _semantic_cache(settings: LlmSettings, embeddings: EmbeddingModels) -> SemanticCache | None:
    threshold = settings.semantic_cache_threshold
    if threshold is None:
        return None

    async def embed(texts: list[str]) -> np.ndarray:
        return np.asarray((await embeddings.embed("", texts)).vectors)

    return SemanticCache(
        embed, threshold, max_entries=settings.cache_max_entries, ttl_s=settings.cache_ttl_s
    )
