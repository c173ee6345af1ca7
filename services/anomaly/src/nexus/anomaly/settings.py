"""Settings of the anomaly service (env prefix `NEXUS_ANOMALY_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nexus.common.settings import ServiceSettings


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

    stream_batch: int = Field(default=256, gt=0)
    """Metric points fetched from the stream at a time."""

    stream_concurrency: int = Field(default=256, gt=0)
    """Metric points of a fetched batch handled at once, so bound models score them together."""

    stream_ack_wait_s: float = Field(default=30.0, gt=0)
    """Seconds before a point delivered to a replica that did not acknowledge it (it stopped,
    crashed or lost its connection) is delivered again."""

    stream_max_deliver: int = Field(default=5, ge=1)
    """Deliveries of a point whose scoring fails before it goes to the dead letters."""

    stream_alpha: float = Field(default=0.05, gt=0, lt=1)
    """Smoothing of the per-source streaming detector's running mean and variance."""

    stream_threshold: float = Field(default=4.0, gt=0)
    """Score (largest |z| over features) above which a streamed point is an anomaly."""

    stream_warmup: int = Field(default=30, ge=1)
    """Points a source's streaming detector sees before it flags anything."""

    batch_max_size: int = Field(default=512, gt=0)
    """Micro-batcher: most requests (ScorePoints calls, streamed points) one detector version
    scores together."""

    batch_max_wait_ms: float = Field(default=2.0, ge=0)
    """Micro-batcher: longest a request waits for others to batch with. While a batch runs,
    the next one fills up whatever this is."""
