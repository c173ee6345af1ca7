"""Settings of the recommender service (env prefix `NEXUS_RECOMMENDER_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nexus.common.settings import ServiceSettings


class RecommenderSettings(ServiceSettings):
    """The recommender service's limits (ports, workers and the rest come from ServiceSettings)."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_RECOMMENDER_", extra="ignore")

    max_batch_interactions: int = Field(default=1_000, gt=0)
    """Most interactions one IngestInteractions call (or one event) may carry; a batch travels
    in one NATS message (about 1 MiB)."""

    max_batch_items: int = Field(default=500, gt=0)
    """Most items one UpsertItems call may carry."""

    max_item_attributes: int = Field(default=32, gt=0)
    """Most attributes of one item or one user (UpsertUsers' batches are capped by
    max_batch_items too)."""

    max_attribute_chars: int = Field(default=256, gt=0)
    """Longest attribute name or value (of items, users, and the attributes rules match)."""

    max_rules: int = Field(default=100, gt=0)
    """Most business rules of one catalog (every Recommend and SimilarItems applies them)."""

    max_weight: float = Field(default=1_000_000.0, gt=0)
    """Largest weight of one interaction."""

    max_results: int = Field(default=500, gt=0)
    """Most items one Recommend or SimilarItems call returns."""

    max_ease_items: int = Field(default=20_000, gt=0)
    """Most items an EASE model may have (it holds an items x items matrix: 20,000 items is
    1.6 GB)."""

    max_evaluate_interactions: int = Field(default=2_000_000, gt=0)
    """Most interactions an Evaluate call trains on while the caller waits."""

    embedding_device: str = "cpu"
    """Where the packaged MiniLM model embeds item text (content-based and hybrid models):
    "cpu", "cuda", "cuda:1" or "auto"."""

    implicit_threads: int = Field(default=1, gt=0)
    """Threads one ALS or BPR training may use."""

    interactions_max_bytes: int = Field(default=8 * 1024**3, gt=0)
    """Bytes the INTERACTIONS stream keeps (the oldest interactions go first): every replica
    replays it at start and training reads it."""

    interactions_max_age_days: float = Field(default=3650.0, gt=0)
    """Days an interaction is kept."""

    sync_timeout_s: float = Field(default=5.0, gt=0)
    """Longest a call waits for this replica to have applied the interactions stored before it
    (its own writes, or other replicas')."""

    model_cache_size: int = Field(default=50, gt=0)
    """Most model versions kept loaded; the least recently used goes first."""

    model_cache_bytes: int = Field(default=4 * 1024**3, gt=0)
    """Most bytes of model versions kept loaded (by artifact size)."""
