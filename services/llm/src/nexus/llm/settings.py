"""Settings of the llm service (env prefix `NEXUS_LLM_`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from nexus.common.settings import ServiceSettings


class LlmSettings(ServiceSettings):
    """The llm service's model configuration, limits, cache and conversation knobs."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_LLM_", extra="ignore")

    config_path: Path | None = None
    """YAML file of model deployments (litellm `model_list`, `router_settings`, `local_models`,
    `embedding_models`); see docs/llm-models.md. None: only the local embedding model."""

    default_embedding_model: str = "all-minilm-l6-v2"
    """The embedding model used when a request names none (the one that ships in a package)."""

    model_cache_dir: Path = Path(tempfile.gettempdir()) / "nexus-llm-models"
    """Where local models fetched from the registry are unpacked."""

    device: str = "auto"
    """Torch device of local models: "auto" (CUDA when present), "cpu", "cuda", "cuda:1"."""

    request_timeout_s: float = Field(default=120.0, gt=0)
    """Longest a provider call may take, retries included."""

    max_messages: int = Field(default=1_000, gt=0)
    """Most messages in one chat request (history included)."""

    max_message_chars: int = Field(default=1_000_000, gt=0)
    """Most characters of all messages of one chat request together."""

    max_output_tokens: int = Field(default=32_768, gt=0)
    """Largest `max_tokens` a request may ask for."""

    max_tools: int = Field(default=128, gt=0)
    """Most tools in one chat request."""

    max_embed_inputs: int = Field(default=512, gt=0)
    """Most texts in one Embed call."""

    max_input_chars: int = Field(default=100_000, gt=0)
    """Longest text to embed, analyse or store as a document."""

    max_upsert_documents: int = Field(default=512, gt=0)
    """Most documents in one UpsertDocuments call."""

    max_collection_documents: int = Field(default=200_000, gt=0)
    """Most documents a collection may hold."""

    max_metadata_bytes: int = Field(default=8_192, gt=0)
    """Largest JSON metadata of a document."""

    max_top_k: int = Field(default=100, gt=0)
    """Most hits one search may return."""

    max_collections: int = Field(default=1_000, gt=0)
    """Most search collections in the deployment."""

    max_sentiment_chars: int = Field(default=500_000, gt=0)
    """Most characters of all texts of one sentiment call together (VADER costs about 3 us a
    character)."""

    conversation_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    """Conversations untouched for this long are deleted."""

    max_conversation_messages: int = Field(default=2_000, gt=0)
    """Most messages a stored conversation keeps (the oldest non-system ones go first)."""

    cache_enabled: bool = True
    """Serve identical chat requests from the response cache."""

    cache_ttl_s: float = Field(default=3_600.0, gt=0)
    """How long a cached response is served."""

    cache_max_entries: int = Field(default=10_000, gt=0)
    """Responses each replica keeps in memory (the shared NATS tier holds the rest)."""

    semantic_cache_threshold: float | None = Field(default=None, gt=0, le=1)
    """Cosine similarity above which a chat whose last user message means the same is served
    from the semantic cache; None turns the semantic cache off."""

    @field_validator("config_path", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        """An empty NEXUS_LLM_CONFIG_PATH (as compose passes an unset one) means no file."""
        return None if value == "" else value

    usage_retention_days: int = Field(default=400, gt=0)
    """Days of per-key usage totals kept."""
