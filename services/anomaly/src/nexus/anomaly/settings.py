"""Settings of the anomaly service (env prefix `NEXUS_ANOMALY_`)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from nexus.common.settings import ServiceSettings

BATCHES_IN_FLIGHT = 4
"""Batches of points a replica may have learnt and not yet seen under the ack floor."""


class AnomalySettings(ServiceSettings):
    """The anomaly service's ports, limits and streaming knobs."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_ANOMALY_", extra="ignore")

    max_batch_points: int = Field(default=10_000, gt=0)
    """Most points one ScorePoints call may carry."""

    max_features: int = Field(default=1_000, gt=0)
    """Most features (columns) a point may have."""

    max_train_rows: int = Field(default=200_000, gt=0)
    """Most rows a detector may be trained on."""

    max_dataset_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest CSV an UploadDataset call may carry."""

    model_cache_size: int = Field(default=1_000, gt=0)
    """Most detector versions kept loaded; the least recently used goes first."""

    model_cache_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)
    """Most bytes of detectors kept loaded (estimated by their artifact size); the least
    recently used goes first."""

    stream_durable: str = "anomaly-stream"
    """Durable consumer name on nexus.metrics.>; replicas with the same name share the work."""

    stream_batch: int = Field(default=2048, gt=0, le=100_000)
    """Metric points fetched from the stream at a time and scored together: each source's
    streaming detector learns its points of a batch, and saves its state, once per batch (the
    save costs about the same for any batch: docs/adr/0049-anomaly-stream-io.md). At most a
    quarter of `stream_recent_points`."""

    stream_ack_wait_s: float = Field(default=30.0, gt=0)
    """Seconds before a point delivered to a replica that did not acknowledge it (it stopped,
    crashed or lost its connection) is delivered again."""

    stream_max_deliver: int = Field(default=5, ge=1)
    """Deliveries of a point whose scoring fails before it goes to the dead letters."""

    stream_max_sources: int = Field(default=10_000, gt=0)
    """Most sources whose streaming detectors a replica holds in memory; the least recently
    used is dropped first, and loaded again from its saved state when its points come back."""

    stream_recent_points: int = Field(default=10_000, gt=0)
    """Stream sequences of a source's learnt points that its saved state remembers above the
    consumer's ack floor, so that a redelivered point is not learnt twice. A point redelivered
    after more of its source's points were learnt is taken as learnt (and not answered again)."""

    stream_state_ttl_s: float = Field(default=30 * 24 * 3600.0, ge=0)
    """A source's saved streaming state not updated for this long is dropped (its next point
    starts a fresh detector); 0 keeps states forever."""

    batch_max_size: int = Field(default=512, gt=0)
    """Micro-batcher: most requests (ScorePoints calls, streamed points) one detector version
    scores together."""

    batch_max_wait_ms: float = Field(default=2.0, ge=0)
    """Micro-batcher: longest a request waits for others to batch with. While a batch runs,
    the next one fills up whatever this is."""

    @model_validator(mode="after")
    def _recent_points_cover_the_batches_in_hand(self) -> Self:
        """A source's state remembers the points it learnt above the ack floor; the batches in
        hand (one learning, one publishing, one fetched) and the floor read a batch late must
        fit, or a point still unacknowledged would count as learnt and, redelivered, not be
        answered again."""
        if self.stream_recent_points < BATCHES_IN_FLIGHT * self.stream_batch:
            raise ValueError(
                f"stream_recent_points ({self.stream_recent_points}) must be at least"
                f" {BATCHES_IN_FLIGHT} x stream_batch ({self.stream_batch})"
            )
        return self
