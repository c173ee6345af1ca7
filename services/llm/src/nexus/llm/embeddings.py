"""Embedding models: the local all-MiniLM-L6-v2 (shipped in a package) and the provider models
that the litellm Router serves, behind one `embed`.

The local model loads once per process and device (`load_local_model`, from
nexus.common.sentence_embeddings, which the recommender shares), off the event loop, and
encodes in the service's executor. Concurrent callers share encoder calls through a
`MicroBatcher` that never waits for company: the first request runs at once, and the requests
that arrive while it runs go together in the next call. Every vector comes back float32 and of
unit length, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import numpy as np

from nexus.common.batching import MicroBatcher
from nexus.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from nexus.common.sentence_embeddings import (  # the packaged model, shared with other services
    LOCAL_MODEL,
    LocalModel,
    load_local_model,
)
from nexus.llm import _litellm  # noqa: F401  (sets HF_HUB_OFFLINE before Hugging Face loads)
from nexus.llm.settings import LlmSettings
from nexus.llm.types import Embeddings, TokenUsage
from nexus.llm.validation import INVALID_TYPE, violation

if TYPE_CHECKING:
    from nexus.llm.router import ModelDescription

log = logging.getLogger(__name__)

LOCAL_PROVIDER = "nexus-local"
"""The provider name of local models."""
ROUTER_PROVIDER = "router"
"""What `provider_of` says of the router's models."""
PROBE_TEXT = "dimensions"
"""What `measure_dimensions` embeds to learn the vector length of a provider model."""

_MAX_BATCHED_REQUESTS = 16  # requests whose texts go into one call of the encoder

ProviderEmbed = Callable[[str, list[str]], Awaitable[Embeddings]]
"""Embeds texts with a provider model through the router: (model, texts) -> Embeddings."""


def check_text(field_path: str, text: object, settings: LlmSettings) -> str:
    """A text to embed, analyse or store: a non-empty string of at most `max_input_chars`.

    Raises:
        InvalidArgument: Not a string, or empty.
        ResourceExhausted: Longer than `settings.max_input_chars`.
    """
    if not isinstance(text, str):
        raise violation(
            field_path, f"Invalid type for '{field_path}': expected a string.", INVALID_TYPE
        )
    if not text:
        raise violation(field_path, f"Invalid '{field_path}': texts must not be empty.")
    if len(text) > settings.max_input_chars:
        raise ResourceExhausted.too_large(
            f"{field_path} (characters)", len(text), settings.max_input_chars
        )
    return text


def check_texts(
    field_path: str, texts: Sequence[str], settings: LlmSettings, limit: int
) -> list[str]:
    """1 to `limit` texts, each checked by `check_text` (as `field_path[i]`).

    Raises:
        InvalidArgument: No texts, a single string instead of a list, or a bad text.
        ResourceExhausted: More than `limit` texts, or a text too long.
    """
    if isinstance(texts, str | bytes):
        raise InvalidArgument.for_field(field_path, "must be a list of texts, not one text")
    items = list(texts)
    if not items:
        raise InvalidArgument.for_field(field_path, "at least one text is required")
    if len(items) > limit:
        raise ResourceExhausted.too_large(field_path, len(items), limit)
    return [check_text(f"{field_path}[{i}]", text, settings) for i, text in enumerate(items)]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """`vectors` (n, d) as float32 rows of length 1 (zero rows stay zero)."""
    rows = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: np.ndarray = rows / np.maximum(norms, np.float32(1e-12))
    return unit


class EmbeddingModels:
    """Every embedding model of the deployment: the local one and the router's.

    Args:
        settings: Limits, the default model's name and the torch device.
        executor: Where the local model encodes (and loads).
        provider_embed: Embeds with a router model (`Router.embed`); None when the deployment
            configures no embedding models.
        provider_models: The router's embedding models and their vector lengths (0: unknown
            until the first call). The local model's name is never sent to the router.
    """

    def __init__(
        self,
        settings: LlmSettings,
        executor: Executor,
        *,
        provider_embed: ProviderEmbed | None = None,
        provider_models: Mapping[str, int] | None = None,
    ) -> None:
        self._settings = settings
        self._executor = executor
        self._provider_embed = provider_embed
        self._provider_dims = {
            name: int(dims) for name, dims in (provider_models or {}).items() if name != LOCAL_MODEL
        }
        if self._provider_dims and provider_embed is None:
            raise ValueError("provider_models need a provider_embed")
        self._default = settings.default_embedding_model or LOCAL_MODEL
        if self._default != LOCAL_MODEL and self._default not in self._provider_dims:
            raise ValueError(f"default_embedding_model {self._default!r} is not an embedding model")
        self._local: LocalModel | None = None
        self._batcher: MicroBatcher[list[str], tuple[np.ndarray, int]] | None = None

    @property
    def default_model(self) -> str:
        """The model that an empty model name means."""
        return self._default

    async def start(self) -> None:
        """Loads the local model (in the executor) and starts batching its requests."""
        loop = asyncio.get_running_loop()
        device = self._settings.device
        self._local = await loop.run_in_executor(self._executor, load_local_model, device)
        self._batcher = MicroBatcher(
            self._encode_batch,
            max_batch_size=_MAX_BATCHED_REQUESTS,
            max_wait_ms=0,
            executor=self._executor,
            name="embeddings",
        )

    async def stop(self) -> None:
        """Finishes the requests in hand and refuses new local ones."""
        if self._batcher is not None:
            await self._batcher.close()

    def names(self) -> dict[str, int]:
        """Every embedding model and its vector length (0 while unknown), by name."""
        local = self._local.dimensions if self._local is not None else 0
        return dict(sorted({**self._provider_dims, LOCAL_MODEL: local}.items()))

    def resolve(self, model: str) -> str:
        """The model a request's name means ("" is the default).

        Raises:
            NotFound: No such embedding model (the message lists the known ones).
        """
        name = model or self._default
        if name != LOCAL_MODEL and name not in self._provider_dims:
            known = ", ".join(self.names())
            raise NotFound(f"no embedding model {name!r} (known: {known})", "MODEL_NOT_FOUND")
        return name

    def local_descriptions(self) -> list[ModelDescription]:
        """The local embedding model as ListModels describes it (after `start`, its dimensions
        and context window are known)."""
        from nexus.llm.router import ModelDescription  # the router's type; imported late

        local = self._local
        return [
            ModelDescription(
                name=LOCAL_MODEL,
                kind="embedding",
                providers=(LOCAL_PROVIDER,),
                context_window=local.max_tokens if local is not None else 0,
                dimensions=local.dimensions if local is not None else 0,
            )
        ]

    def provider_of(self, model: str) -> str:
        """Who serves `model` ("" is the default): LOCAL_PROVIDER for the local model, "router"
        for the router's (whose descriptions name their providers).

        Raises:
            NotFound: No such embedding model.
        """
        return LOCAL_PROVIDER if self.resolve(model) == LOCAL_MODEL else ROUTER_PROVIDER

    def dimensions(self, model: str) -> int:
        """The vector length of `model` ("" is the default), 0 while unknown.

        Raises:
            NotFound: No such embedding model.
        """
        return self.names()[self.resolve(model)]

    async def measure_dimensions(self, model: str) -> int:
        """The vector length of `model`, embedding `PROBE_TEXT` once if it is not known yet."""
        dims = self.dimensions(model)
        if dims == 0:
            dims = (await self.embed(model, [PROBE_TEXT])).dimensions
        return dims

    async def embed(self, model: str, texts: Sequence[str], *, field: str = "inputs") -> Embeddings:
        """Unit float32 vectors of `texts`, in order, with their usage.

        The local model reads at most its first 256 tokens of a text; its usage counts the
        tokens it read (special tokens included) and costs nothing.

        Args:
            model: An embedding model of `names()`; "" for the default.
            texts: 1 to `max_embed_inputs` non-empty texts of at most `max_input_chars`.
            field: The request's field that holds them, for their errors.

        Raises:
            InvalidArgument: No texts, or an empty one (`inputs[i]`).
            ResourceExhausted: Too many texts, or a text too long.
            NotFound: No such embedding model.
            FailedPrecondition: The local model is not started.
        """
        name = self.resolve(model)
        checked = check_texts(field, texts, self._settings, self._settings.max_embed_inputs)
        if name == LOCAL_MODEL:
            return await self._embed_local(checked)
        return await self._embed_provider(name, checked)

    async def _embed_local(self, texts: list[str]) -> Embeddings:
        if self._batcher is None:
            raise FailedPrecondition("the local embedding model is not started")
        vectors, tokens = await self._batcher.submit(texts)
        return Embeddings(LOCAL_MODEL, vectors, TokenUsage(prompt_tokens=tokens))

    def _encode_batch(self, requests: list[list[str]]) -> list[tuple[np.ndarray, int]]:
        """Encodes the texts of several requests in one call; runs in the executor."""
        assert self._local is not None
        vectors, counts = self._local.encode([text for texts in requests for text in texts])
        results, start = [], 0
        for texts in requests:
            end = start + len(texts)
            results.append((vectors[start:end], sum(counts[start:end])))
            start = end
        return results

    async def _embed_provider(self, name: str, texts: list[str]) -> Embeddings:
        assert self._provider_embed is not None  # __init__ refused provider models without it
        result = await self._provider_embed(name, texts)
        vectors = np.asarray(result.vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts) or vectors.shape[1] == 0:
            raise Unavailable(
                f"embedding model {name!r} returned vectors of shape {vectors.shape} "
                f"for {len(texts)} texts"
            )
        self._provider_dims[name] = int(vectors.shape[1])
        return Embeddings(name, unit_rows(vectors), result.usage)
