"""A run's record: its state, the steps still to run, each executed step, its timers.

One JSON value per run in KV `nexus_orchestrator_runs`, changed only with compare-and-set.
`tick` counts the advances of the run: the advance message of tick n has the event id
`<run>:<n>`, so any number of replicas publish it and JetStream stores it once, and a message
of an older tick is stale. `wake_at` is when the run must be advanced again even if no message
comes (a timer, a backoff, a signal's timeout, or a lease over a step in flight).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

PENDING, RUNNING, WAITING = "PENDING", "RUNNING", "WAITING"
SUCCEEDED, FAILED, CANCELLED, TIMED_OUT = "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"
DONE = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT})
SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class StepRecord:
    """One execution of a step (a rerun adds another).

    Attributes:
        attempt_open: The attempt `attempts` began and has not ended (its replica may have died:
            the next one calls again with the same idempotency key).
        wait_until: The end of the step's wait (sleep, backoff, a signal's timeout); 0: none.
    """

    step_id: str
    kind: str
    state: str
    started: float
    input: Any = None
    output: Any = None
    error: dict[str, str] | None = None
    attempts: int = 0
    attempt_open: bool = False
    attempt_started: float = 0.0
    last_attempt_s: float = 0.0
    wait_until: float = 0.0
    ended: float = 0.0

    @property
    def done(self) -> bool:
        return self.state in (SUCCEEDED, FAILED, SKIPPED, CANCELLED)


@dataclass(frozen=True)
class RunRecord:
    """One run of a workflow version."""

    run_id: str
    workflow: str
    version: int
    inputs: dict[str, Any]
    created: float
    state: str = PENDING
    pending: tuple[str, ...] = ()
    history: tuple[StepRecord, ...] = ()
    attempts: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    tick: int = 0
    wake_at: float = 0.0
    deadline: float = 0.0
    updated: float = 0.0
    ended: float = 0.0
    cancel_requested: bool = False
    signals: dict[str, list[Any]] = field(default_factory=dict)
    failing: dict[str, str] | None = None
    resume: tuple[str, ...] = ()
    owner_key_id: str = ""
    trigger_kind: str = "manual"
    trigger_detail: str = ""

    @property
    def done(self) -> bool:
        return self.state in DONE

    @property
    def current(self) -> StepRecord | None:
        """The execution of the step at the head of `pending`, when it began and is not done."""
        if self.pending and self.history:
            last = self.history[-1]
            if last.step_id == self.pending[0] and not last.done:
                return last
        return None

    def with_current(self, step: StepRecord) -> RunRecord:
        """The record with `step` as the execution of the current step (added or replaced)."""
        history = self.history[:-1] if self.current is not None else self.history
        return replace(self, history=(*history, step))

    def outputs_by_step(self) -> dict[str, Any]:
        """`steps.<id>` of expressions: the latest execution of each step."""
        return {
            step.step_id: {"output": step.output, "state": step.state, "attempts": step.attempts}
            for step in self.history
        }

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> RunRecord:
        raw = json.loads(data)
        raw["history"] = tuple(StepRecord(**step) for step in raw["history"])
        raw["pending"] = tuple(raw["pending"])
        raw["resume"] = tuple(raw["resume"])
        return cls(**raw)


def error_of(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}
