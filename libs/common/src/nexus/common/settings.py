"""Typed settings: one pydantic-settings class per scope, a docstring under each field.

`NexusSettings` holds what every process shares (env prefix `NEXUS_`); each service subclasses
`ServiceSettings` with its own prefix (`NEXUS_ANOMALY_`) for its ports and its own knobs. Nothing
else in the code base reads `os.environ`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class NexusSettings(BaseSettings):
    """Settings shared by every Nexus process (env prefix `NEXUS_`)."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server URL(s), comma separated; JetStream must be enabled."""

    nats_connect_timeout_s: float = Field(default=5.0, gt=0)
    """Seconds to wait for the first NATS connection before giving up."""

    otlp_endpoint: str = ""
    """OTLP/gRPC endpoint for traces (http://collector:4317); empty: traces are not exported."""

    log_level: str = "INFO"
    """Root log level."""

    log_json: bool = True
    """Structured JSON logs (with trace ids); false for plain text."""

    auth_enabled: bool = True
    """Check API keys on every RPC. Turn off only inside a trusted network."""

    registry_signing_key: SecretStr = SecretStr("")
    """HMAC key with which the model registry signs the pickles it writes. Every replica needs the
    same key; a pickle whose signature does not verify is never loaded."""

    idempotency_ttl_s: float = Field(default=24 * 3600.0, gt=0)
    """How long the outcome of a call made with an `Idempotency-Key` is kept: a retry with the
    same key within this time gets it back instead of running the call again."""

    idempotency_lease_s: float = Field(default=30.0, gt=0)
    """How long a call in progress keeps its `Idempotency-Key` past its last renewal (renewed
    three times per lease while it runs). When its process dies, a retry runs the call again
    once this much time has passed. Replicas' clocks must agree to well within this."""

    environment: str = "development"
    """Name of the deployment, recorded on traces and metrics."""


class LauncherSettings(NexusSettings):
    """Settings of `nexus up`, the one-machine platform (env prefix `NEXUS_`); its flags win.

    The gateway's port and interface are the gateway's own settings (`NEXUS_GATEWAY_PORT`,
    `NEXUS_GATEWAY_HOST`), read here too so that the launcher honours them.
    """

    data_dir: Path = Path(".nexus")
    """NATS data, logs, the signing key, the run file (`run.json`) and the first admin key."""

    nats_port: int = Field(default=4222, ge=0, le=65535)
    """Client port of the embedded NATS; 0 picks a free one (kept across its restarts)."""

    gateway_host: str = "127.0.0.1"
    """Interface the gateway binds to."""

    gateway_port: int = Field(default=8080, ge=0, le=65535)
    """The gateway's HTTP port; 0 picks a free one (kept across its restarts)."""

    restart_delay_s: float = Field(default=0.5, gt=0)
    """Wait before restarting a child that exited; doubled after each crash in a row."""

    restart_max_delay_s: float = Field(default=30.0, gt=0)
    """Longest wait before a restart."""

    restart_reset_s: float = Field(default=30.0, gt=0)
    """A child that ran this long before it exited is restarted after the first delay again."""

    stop_timeout_s: float = Field(default=15.0, gt=0)
    """Seconds each stage of a stop (gateway, services, NATS) gets before what is left is
    killed."""


class ServiceSettings(BaseSettings):
    """Per-service settings; subclasses set `env_prefix` to `NEXUS_<NAME>_`."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_SERVICE_", extra="ignore")

    grpc_host: str = "127.0.0.1"
    """Interface the gRPC server binds to (0.0.0.0 in containers)."""

    grpc_port: int = Field(default=0, ge=0, le=65535)
    """gRPC port; 0 picks a free one (tests)."""

    metrics_port: int = Field(default=0, ge=0, le=65535)
    """Prometheus metrics port; 0 disables the metrics endpoint."""

    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """Largest gRPC message accepted or sent, in bytes."""

    max_concurrent_rpcs: int = Field(default=256, gt=0)
    """RPCs in flight before new ones are refused with RESOURCE_EXHAUSTED."""

    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """Seconds in-flight RPCs get to finish after SIGTERM."""

    workers: int = Field(default=2, gt=0)
    """Threads for CPU-heavy work (kept off the event loop)."""

    operations_workers: int = Field(default=1, gt=0)
    """Long-running operations (training) one replica runs at once; the rest wait in the
    queue for any replica with a free worker."""

    operations_max_attempts: int = Field(default=3, gt=0)
    """Attempts an operation gets (a replica that died, a dependency that was down) before it
    fails with the last error."""

    operations_ack_wait_s: float = Field(default=30.0, gt=0)
    """Seconds after which the operation of a replica that stopped heartbeating (it died) goes
    to another replica. Running operations heartbeat every third of it."""
