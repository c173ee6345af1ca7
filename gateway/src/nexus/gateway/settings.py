"""Settings of the HTTP gateway (env prefix `NEXUS_GATEWAY_`)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """What the gateway listens on, where its backends are, and its limits.

    Shared settings (NATS URL, auth on or off, log level) come from `NexusSettings`.
    """

    model_config = SettingsConfigDict(env_prefix="NEXUS_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    """Interface the HTTP server binds to (0.0.0.0 in containers)."""

    port: int = Field(default=8080, ge=0, le=65535)
    """HTTP port; 0 picks a free one (tests)."""

    backends: dict[str, str] = Field(default_factory=dict)
    """Backend name -> gRPC address ("host:port"), JSON in the environment:
    `NEXUS_GATEWAY_BACKENDS='{"anomaly": "anomaly:50051"}'`. The name is the `<area>` of a proto
    package `nexus.<area>.v1`, or the value of a `route_by_field` request field."""

    max_url_bytes: int = Field(default=8 * 1024, gt=0)
    """Longest URL (path and query string) accepted; a longer one gets 414."""

    max_head_bytes: int = Field(default=64 * 1024, gt=0)
    """Largest request head (request line and headers) read at all; beyond it the gateway
    answers 414 (a request line that long) or 431 (headers) and closes the connection."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    """Largest HTTP request body accepted; a larger one gets 413."""

    max_part_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    """Largest part of a multipart/form-data body (a file, a text value); a larger one gets 413.
    The whole body is bounded by `max_body_bytes` too."""

    max_form_parts: int = Field(default=64, gt=0)
    """Most parts of a multipart/form-data body; more get 413."""

    offload_bytes: int = Field(default=64 * 1024, ge=0)
    """Request bodies and responses larger than this are transcoded (JSON <-> protobuf) on worker
    threads, so the event loop keeps serving other requests and probes meanwhile; smaller ones,
    which take microseconds, inline."""

    transcode_workers: int = Field(default=2, gt=0)
    """Worker threads for large bodies; more large bodies at once wait for one."""

    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """Largest gRPC message sent to or received from a backend, in bytes."""

    default_timeout_s: float = Field(default=30.0, gt=0)
    """Deadline of a unary backend call when the client asks for none."""

    max_timeout_s: float = Field(default=300.0, gt=0)
    """Longest deadline a client may ask for a unary call (`X-Nexus-Timeout`, `grpc-timeout`)."""

    stream_timeout_s: float = Field(default=3600.0, gt=0)
    """Deadline of a server-streaming call (an SSE stream), and the longest a client may ask for.
    SSE clients reconnect when a stream ends."""

    rate_limit_per_minute: int = Field(default=600, ge=0)
    """Requests per minute per API key, for keys without a rate of their own; 0: no limit. With
    auth off, the limit applies per client address."""

    rate_limit_burst: int = Field(default=60, gt=0)
    """Most requests a key may make at once (the size of its token bucket)."""

    rate_limit_max_keys: int = Field(default=100_000, gt=0)
    """Token buckets kept in memory; the least recently used one goes when the table is full."""

    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed to call from a browser (CORS), JSON list; `["*"]` for any; empty: none."""

    readiness_timeout_s: float = Field(default=2.0, gt=0)
    """Deadline of each backend's health check behind `/readyz`."""

    sse_keepalive_s: float = Field(default=15.0, gt=0)
    """Seconds of silence on an SSE stream before a keep-alive comment is sent (proxies close
    idle connections, and a write is how a vanished client is noticed)."""

    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """Seconds in-flight requests get to finish after SIGTERM."""

    bootstrap_admin_key: SecretStr = SecretStr("")
    """An admin API key (`nxk_<id>_<secret>`, scope `*`) that the gateway stores at start when no
    key has its id yet: how a cluster gets its first key, from a Secret. Every replica may hold
    it (the first stores it; a revoked one stays revoked). Empty: none; `nexus up` makes its own."""
