"""Calls to models: litellm's Router over the configured deployments (local models included,
as the `nexus-local` provider), with token counting, prices and context windows per model.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from nexus.common.errors import NexusError, NotFound
from nexus.llm._litellm import Router, litellm
from nexus.llm.config import Deployment, ModelsConfig
from nexus.llm.local import PROVIDER as LOCAL_PROVIDER
from nexus.llm.local import (
    LocalModels,
    local_model_id,
    register_provider,
    unregister_provider,
)
from nexus.llm.providers import Redactor, provider_error
from nexus.llm.types import Chunk, Completion, Embeddings, Message, TokenUsage

DEFAULT_STREAM_USAGE = {"include_usage": True}


@dataclass(frozen=True)
class ModelDescription:
    """A model group as clients see it.

    Attributes:
        name: The name requests use.
        kind: "chat" or "embedding".
        providers: The providers of its deployments.
        context_window: Most prompt tokens (0 when unknown).
        max_output_tokens: Most generated tokens (0 when unknown).
        dimensions: Vector length of an embedding model (0 when unknown).
        input_cost_per_token: US dollars per prompt token.
        output_cost_per_token: US dollars per generated token.
    """

    name: str
    kind: str
    providers: tuple[str, ...]
    context_window: int = 0
    max_output_tokens: int = 0
    dimensions: int = 0
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """US dollars for these token counts."""
        return (
            prompt_tokens * self.input_cost_per_token
            + completion_tokens * self.output_cost_per_token
        )


class ProviderRouter:
    """The configured models behind one litellm Router.

    Args:
        config: Deployments and router settings.
        local: The loaded local models (started).
        timeout_s: Default timeout of a provider call.
    """

    def __init__(self, config: ModelsConfig, local: LocalModels, *, timeout_s: float) -> None:
        register_provider(local)
        self._config = config
        self._local = local
        self._redact = Redactor.from_params(d.litellm_params for d in config.deployments)
        settings: dict[str, Any] = {"timeout": timeout_s, **config.router_settings}
        self._router = (
            Router(
                model_list=[d.as_litellm(self._local_id) for d in config.deployments], **settings
            )
            if config.deployments
            else None
        )
        self._models = {m.name: m for m in (self._describe(n) for n in _names(config))}

    def close(self) -> None:
        """Takes the local models out of litellm's provider."""
        unregister_provider(self._local)

    def _local_id(self, name: str) -> str:
        return local_model_id(self._local, name)

    # Models.

    def models(self) -> list[ModelDescription]:
        """Every chat and embedding model group, sorted by name."""
        return [self._models[name] for name in sorted(self._models)]

    def chat_model(self, name: str) -> ModelDescription:
        """The chat model group `name`.

        Raises:
            NotFound: No chat model of that name (the message lists the known ones).
        """
        return self._model(name, "chat")

    def embedding_model(self, name: str) -> ModelDescription:
        """The embedding model group `name` (see `chat_model`)."""
        return self._model(name, "embedding")

    def count_tokens(
        self, model: str, messages: list[Message], tools: list[dict[str, Any]] | None = None
    ) -> int:
        """Prompt tokens of `messages` for `model`'s (first) deployment."""
        deployment = self._config.deployments_of(model)[0]
        if deployment.local_name:
            return self._local.get(deployment.local_name).count_tokens(messages, tools)
        # Tools arrive as validated OpenAI JSON; litellm types them as its TypedDict.
        offered: Any = tools
        return int(litellm.token_counter(model=deployment.model, messages=messages, tools=offered))

    def count_text_tokens(self, model: str, text: str) -> int:
        """Tokens of a plain text for `model` (to bill a stream cut short)."""
        return self.count_tokens(model, [{"role": "assistant", "content": text}])

    # Calls.

    async def complete(
        self, model: str, messages: list[Message], params: dict[str, Any]
    ) -> Completion:
        """One completion from `model` (retries, fallbacks and cooldowns are the router's).

        Raises:
            NexusError: The provider's failure in the platform's terms, secrets masked.
        """
        description = self.chat_model(model)
        try:
            response = await self._require_router().acompletion(
                model=model, messages=messages, **params
            )
        except NexusError:
            raise
        except Exception as err:
            raise provider_error(err, self._redact, model) from err
        return _completion(model, response, description)

    async def stream(
        self, model: str, messages: list[Message], params: dict[str, Any]
    ) -> AsyncIterator[Chunk]:
        """A completion from `model` as it is generated; the last chunk has the usage.

        Closing the iterator (or cancelling the task reading it) closes the provider stream,
        which stops generation upstream.

        Raises:
            NexusError: As `complete`, at any point of the stream.
        """
        description = self.chat_model(model)
        started = _Started(id=f"chatcmpl-{uuid.uuid4().hex}", created=time.time())
        try:
            response = await self._require_router().acompletion(
                model=model,
                messages=messages,
                stream=True,
                stream_options=DEFAULT_STREAM_USAGE,
                **params,
            )
            async for piece in _pieces(model, response, description, started):
                yield piece
        except NexusError:
            raise
        except Exception as err:
            raise provider_error(err, self._redact, model) from err

    async def embed(self, model: str, texts: list[str]) -> Embeddings:
        """Embeddings of `texts` from a provider's embedding model, L2-normalised."""
        description = self.embedding_model(model)
        try:
            response = await self._require_router().aembedding(model=model, input=texts)
        except NexusError:
            raise
        except Exception as err:
            raise provider_error(err, self._redact, model) from err
        vectors = np.asarray([item["embedding"] for item in response.data], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        tokens = int(getattr(response.usage, "prompt_tokens", 0) or 0)
        usage = TokenUsage(tokens, 0, description.cost(tokens, 0))
        return Embeddings(model, vectors / np.maximum(norms, 1e-12), usage)

    # Internals.

    def _model(self, name: str, kind: str) -> ModelDescription:
        found = self._models.get(name)
        if found is None or found.kind != kind:
            known = ", ".join(m.name for m in self.models() if m.kind == kind) or "none"
            raise NotFound(f"no {kind} model {name!r} (known: {known})", reason="MODEL_NOT_FOUND")
        return found

    def _require_router(self) -> Any:
        if self._router is None:  # pragma: no cover - _model() already refused the name
            raise NotFound("no models are configured", reason="MODEL_NOT_FOUND")
        return self._router

    def _describe(self, name: str) -> ModelDescription:
        deployments = self._config.deployments_of(name)
        first = deployments[0]
        facts = self._facts(first)
        return ModelDescription(
            name=name,
            kind="embedding" if first.is_embedding else "chat",
            providers=tuple(sorted({_provider(d) for d in deployments})),
            context_window=int(first.model_info.get("max_input_tokens") or facts["context"]),
            max_output_tokens=int(first.model_info.get("max_output_tokens") or facts["output"]),
            dimensions=int(first.model_info.get("output_vector_size") or facts["dims"]),
            input_cost_per_token=float(_price(first, "input_cost_per_token", facts)),
            output_cost_per_token=float(_price(first, "output_cost_per_token", facts)),
        )

    def _facts(self, deployment: Deployment) -> dict[str, Any]:
        if deployment.local_name:
            window = self._local.get(deployment.local_name).context_window
            return {"context": window, "output": window, "dims": 0}
        info: dict[str, Any]
        try:
            info = dict(litellm.get_model_info(deployment.model))
        except Exception:  # a model litellm's cost map does not know: facts from the config
            info = {}
        return {
            "context": info.get("max_input_tokens") or 0,
            "output": info.get("max_output_tokens") or 0,
            "dims": info.get("output_vector_size") or 0,
            "input_cost_per_token": info.get("input_cost_per_token") or 0.0,
            "output_cost_per_token": info.get("output_cost_per_token") or 0.0,
        }


@dataclass(frozen=True)
class _Started:
    id: str
    created: float


def _names(config: ModelsConfig) -> list[str]:
    return config.chat_models() + config.embedding_models()


def _provider(deployment: Deployment) -> str:
    if deployment.local_name:
        return LOCAL_PROVIDER
    try:
        return str(litellm.get_llm_provider(deployment.model)[1])
    except Exception:
        return deployment.model.split("/", 1)[0]


def _price(deployment: Deployment, key: str, facts: dict[str, Any]) -> float:
    configured = deployment.model_info.get(key, deployment.litellm_params.get(key))
    return float(configured if configured is not None else facts.get(key, 0.0))


def _provider_of(response: Any, description: ModelDescription) -> str:
    hidden = getattr(response, "_hidden_params", None) or {}
    provider = hidden.get("custom_llm_provider") or ""
    return str(provider or (description.providers[0] if description.providers else ""))


def _completion(model: str, response: Any, description: ModelDescription) -> Completion:
    choice = response.choices[0]
    message = choice.message.model_dump(exclude_none=True)
    message = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls")}
    message.setdefault("content", "")
    if message["content"] is None:
        message["content"] = ""
    usage = _usage(getattr(response, "usage", None), description)
    return Completion(
        id=str(response.id or f"chatcmpl-{uuid.uuid4().hex}"),
        model=model,
        provider=_provider_of(response, description),
        message=message,
        finish_reason=str(choice.finish_reason or "stop"),
        usage=usage,
        created=float(response.created or time.time()),
    )


def _usage(raw: Any, description: ModelDescription) -> TokenUsage:
    prompt = int(getattr(raw, "prompt_tokens", 0) or 0)
    completion = int(getattr(raw, "completion_tokens", 0) or 0)
    return TokenUsage(prompt, completion, description.cost(prompt, completion))


async def _pieces(
    model: str, response: Any, description: ModelDescription, started: _Started
) -> AsyncIterator[Chunk]:
    provider, first, finish, usage = "", True, "", None
    try:
        async for raw in response:
            provider = provider or _provider_of(raw, description)
            usage = _usage(raw.usage, description) if getattr(raw, "usage", None) else usage
            if not raw.choices:
                continue
            choice = raw.choices[0]
            finish = str(choice.finish_reason or finish)
            delta = choice.delta
            calls = [c.model_dump(exclude_none=True) for c in (delta.tool_calls or [])]
            if delta.content or calls or first:
                yield Chunk(
                    id=started.id,
                    model=model,
                    provider=provider,
                    created=started.created,
                    role="assistant" if first else "",
                    content=delta.content or "",
                    tool_calls=calls,
                )
                first = False
    finally:
        await _close(response)
    yield Chunk(
        id=started.id,
        model=model,
        provider=provider,
        created=started.created,
        finish_reason=finish or "stop",
        usage=usage,
    )


async def _close(response: Any) -> None:
    """Closes the provider stream (an HTTP response, or a local generation)."""
    closer = getattr(response, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:  # closing is best effort; the stream is over either way
            return
