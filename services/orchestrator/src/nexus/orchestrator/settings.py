"""Settings of the orchestrator (env prefix `NEXUS_ORCHESTRATOR_`)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from nexus.common.settings import ServiceSettings


class OrchestratorSettings(ServiceSettings):
    """The orchestrator's backends, credentials and limits (ports and the rest come from
    ServiceSettings)."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_ORCHESTRATOR_", extra="ignore")

    backends: dict[str, str] = Field(default_factory=dict)
    """Service name -> "host:port" of the services steps call (JSON), as the gateway's
    NEXUS_GATEWAY_BACKENDS; `nexus up` sets it."""

    service_key: SecretStr = SecretStr("")
    """The orchestrator's own API key, sent on the calls its steps make. The scopes a step may
    use are those of the key that registered the workflow, checked here before each call."""

    step_workers: int = Field(default=64, gt=0)
    """Runs one replica advances at once from the queue, and as many of those it started and
    drives itself (ADR 0053)."""

    steps_in_place: int = Field(default=100, gt=0)
    """Steps a replica takes a run on by itself, each written before the next, before handing
    it back to the queue (1: every step goes through the queue, which spreads the steps of one
    run over the replicas but costs a publish, a delivery and a read each)."""

    view_every_s: float = Field(default=0.1, gt=0, le=60)
    """How often at most a replica publishes the view of a run it is driving step after step
    (every replica follows the views, not each step's write; the drive's end is published at
    once): how far behind the others' lists may show such a run (ADR 0056)."""

    trigger_concurrency: int = Field(default=32, gt=0, le=1000)
    """Events of one event trigger that one replica handles at once."""

    queue_sample_s: float = Field(default=5.0, gt=0)
    """How often the queues' pending messages are read into the metrics."""

    wait_event_poll_s: float = Field(default=5.0, gt=0, le=3600)
    """How often a run waiting for an event looks at the stream with no hint (a message on its
    subject wakes it at once; the poll covers a hint lost while replicas or NATS restarted)."""

    ack_wait_s: float = Field(default=30.0, gt=0)
    """Silence after which a step whose replica died goes to another (an advance not
    acknowledged, or the beats of the replica that drives a run it started)."""

    default_step_timeout_s: float = Field(default=60.0, gt=0)
    """Limit of one attempt of a call step that sets no timeout_s."""

    max_inputs_bytes: int = Field(default=256 * 1024, gt=0)
    """Largest inputs of a run (as JSON)."""

    max_output_bytes: int = Field(default=64 * 1024, gt=0)
    """Largest output a step keeps (as JSON); a larger response fails the step."""
