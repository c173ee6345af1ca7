"""The Embed path: budget check, embedding, usage accounting (as the chat path does)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from nexus.llm.budgets import BudgetStore
from nexus.llm.embeddings import ROUTER_PROVIDER, EmbeddingModels
from nexus.llm.router import ProviderRouter
from nexus.llm.types import Embeddings, UsageRecord
from nexus.llm.usage import UsageLedger
from nexus.llm.validation import check_dimensions, embedding_model_name, validate_embedding


class EmbeddingPath:
    """Embeddings for callers, billed to their key.

    Args:
        models: The embedding models.
        router: The router (for the providers of its embedding models).
        ledger: Usage accounting.
        budgets: Per-key limits (a key over its limit is refused before embedding).
    """

    def __init__(
        self,
        models: EmbeddingModels,
        router: ProviderRouter,
        ledger: UsageLedger,
        budgets: BudgetStore,
    ) -> None:
        self._models = models
        self._router = router
        self._ledger = ledger
        self._budgets = budgets

    async def embed(
        self,
        model: str,
        texts: Sequence[str],
        api_key_id: str,
        raw: Mapping[str, Any] | None = None,
    ) -> Embeddings:
        """Embeddings of `texts` with `model` ("" for the default), billed to `api_key_id`.

        Args:
            model: The model.
            texts: The texts.
            api_key_id: Who pays.
            raw: Further parameters by their OpenAI names, as JSON, unchecked (the request's
                `openai_parameters`): checked after the model is found, as OpenAI does.
        """
        started = time.perf_counter()
        raw = raw or {}
        name = self._models.resolve(embedding_model_name(model, raw))
        request = validate_embedding(texts, raw)
        check_dimensions(name, request.dimensions, self._models.dimensions(name))
        reservation = await self._budgets.reserve(api_key_id, 0.0)
        try:
            result = await self._models.embed(name, request.texts, field=request.field)
        except BaseException:
            await self._budgets.release(reservation)
            raise
        await self._budgets.settle(reservation, result.usage.cost_usd)
        check_dimensions(name, request.dimensions, result.dimensions)
        record = UsageRecord(
            api_key_id=api_key_id,
            operation="embed",
            model=result.model,
            provider=self._provider(result.model),
            usage=result.usage,
            latency_s=time.perf_counter() - started,
        )
        self._ledger.submit(record)
        return result

    def _provider(self, model: str) -> str:
        provider = self._models.provider_of(model)
        if provider == ROUTER_PROVIDER:
            return self._router.embedding_model(model).providers[0]
        return provider
