"""What one advance does to a run: pure functions from a record (and the definition) to the
next record, and the effects (a call, a publish) that the engine performs between them."""

from __future__ import annotations

import time
from typing import Any

from nexus.orchestrator import expressions
from nexus.orchestrator.definitions import Definition
from nexus.orchestrator.definitions.model import Step
from nexus.orchestrator.engine.records import (
    CANCELLED,
    FAILED,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TIMED_OUT,
    WAITING,
    RunRecord,
    StepRecord,
    error_of,
    replace,
)

RUN_TIMED_OUT = "DEADLINE_EXCEEDED"


def context(run: RunRecord) -> dict[str, Any]:
    """The variables of expressions: `inputs`, `steps`, `run`, and `item` in a map's item."""
    steps = run.outputs_by_step()
    variables = {
        "inputs": run.inputs,
        "steps": {**run.seed["steps"], **steps} if "steps" in run.seed else steps,
        "run": {
            "id": run.run_id,
            "workflow": run.workflow,
            "version": run.version,
            "parent": run.parent,
        },
    }
    if "item" in run.seed:
        variables["item"] = run.seed["item"]
    return variables


def begin(run: RunRecord, step: Step, now: float, input_: Any = None) -> RunRecord:
    """The run with an execution of `step` begun (RUNNING, no attempt yet)."""
    record = StepRecord(step_id=step.id, kind=step.kind, state=RUNNING, started=now, input=input_)
    return replace(run.with_current(record), state=RUNNING)


def open_attempt(run: RunRecord, step: StepRecord, now: float, lease_s: float) -> RunRecord:
    """The run with attempt N+1 of its current step open (recorded before the call)."""
    attempt = run.attempts.get(step.step_id, 0) + 1
    opened = replace(
        step, state=RUNNING, attempts=step.attempts + 1, attempt_open=True, attempt_started=now
    )
    return replace(
        run.with_current(opened),
        state=RUNNING,
        attempts={**run.attempts, step.step_id: attempt},
        wake_at=now + lease_s,
    )


def idempotency_key(run: RunRecord, step_id: str) -> str:
    """The key of the open attempt of `step_id`: the same for every replica that makes it."""
    return f"orchestrator:{run.run_id}:{step_id}:{run.attempts.get(step_id, 0)}"


def succeed(run: RunRecord, output: Any, now: float, redrive_s: float) -> RunRecord:
    """The run with its current step SUCCEEDED and the next one due."""
    done = _closed(run, SUCCEEDED, now, output=output)
    return next_step(replace(run.with_current(done), pending=run.pending[1:]), now, redrive_s)


def skip(run: RunRecord, step: Step, now: float, redrive_s: float) -> RunRecord:
    """The run with `step` SKIPPED (its condition was false) and the next one due."""
    record = StepRecord(step_id=step.id, kind=step.kind, state=SKIPPED, started=now, ended=now)
    return next_step(replace(run.with_current(record), pending=run.pending[1:]), now, redrive_s)


def expand(run: RunRecord, chosen: list[str], output: Any, now: float, r: float) -> RunRecord:
    """A switch done: its chosen steps run next."""
    step = run.current
    assert step is not None
    done = replace(step, state=SUCCEEDED, output=output, ended=now)
    return next_step(replace(run.with_current(done), pending=(*chosen, *run.pending[1:])), now, r)


def progress(run: RunRecord, output: Any) -> RunRecord:
    """The run with its current step's output so far (a fan-out step's children counted)."""
    step = run.current
    assert step is not None
    return run.with_current(replace(step, output=output))


def wait(run: RunRecord, until: float) -> RunRecord:
    """The run waiting for its current step until `until` (a timer, backoff, timeout)."""
    step = run.current
    assert step is not None
    waiting = replace(step, state=WAITING, attempt_open=False, wait_until=until)
    return replace(run.with_current(waiting), state=WAITING, wake_at=_earliest(until, run))


def wait_event(run: RunRecord, until: float, poll: float, output: Any) -> RunRecord:
    """The run waiting for an event until `until` (0: no timeout), looking at the stream
    again at `poll` at the latest; `output`: how far it read."""
    waiting = wait(progress(run, output), until)
    return replace(waiting, wake_at=min(t for t in (waiting.wake_at, poll) if t))


def retry_later(run: RunRecord, error: dict[str, str], until: float, now: float) -> RunRecord:
    """The failed attempt closed; the step waits for its backoff."""
    step = run.current
    assert step is not None
    closed = replace(step, error=error, last_attempt_s=now - step.attempt_started)
    return wait(run.with_current(closed), until)


def next_step(run: RunRecord, now: float, redrive_s: float) -> RunRecord:
    """The run after a step ended: the next step due, or the run done."""
    if run.pending:
        return replace(run, state=RUNNING, tick=run.tick + 1, wake_at=now + redrive_s)
    if run.failing is not None:
        return end(run, FAILED, now, run.failing)
    return end(run, SUCCEEDED, now)


def fail_step(
    run: RunRecord, definition: Definition, error: dict[str, str], now: float, redrive_s: float
) -> RunRecord:
    """The current step FAILED for good: the on-failure path next, or the run FAILED."""
    run = run.with_current(_closed(run, FAILED, now, error=error))
    on_failure = definition.on_failure()
    if run.failing is None and on_failure:
        return next_step(
            replace(run, pending=tuple(on_failure), failing=error, resume=run.pending),
            now,
            redrive_s,
        )
    resume = run.resume if run.failing is not None else run.pending
    return end(replace(run, resume=resume), FAILED, now, run.failing or error)


def end(run: RunRecord, state: str, now: float, error: dict[str, str] | None = None) -> RunRecord:
    """The run done in `state`; a step still running or waiting is CANCELLED."""
    step = run.current
    if step is not None and state != SUCCEEDED:
        run = run.with_current(replace(step, state=CANCELLED, attempt_open=False, ended=now))
    if state in (CANCELLED, TIMED_OUT) and not run.resume:
        run = replace(run, resume=run.pending)
    return replace(
        run, state=state, error=error, ended=now, wake_at=0.0, tick=run.tick + 1, pending=()
    )


def timed_out(run: RunRecord, now: float) -> RunRecord:
    return end(run, TIMED_OUT, now, error_of(RUN_TIMED_OUT, "the run's timeout passed"))


def outputs(run: RunRecord, definition: Definition) -> dict[str, Any]:
    """The run's outputs, rendered from the definition's `outputs` over its context."""
    return dict(expressions.render(definition.outputs, context(run)))


def rerun(run: RunRecord, now: float, deadline: float, redrive_s: float) -> RunRecord:
    """A stopped run again from the step that stopped it."""
    return replace(
        run,
        state=RUNNING,
        pending=run.resume,
        resume=(),
        error=None,
        failing=None,
        outputs=None,
        ended=0.0,
        cancel_requested=False,
        deadline=deadline,
        tick=run.tick + 1,
        wake_at=now + redrive_s,
    )


def _closed(run: RunRecord, state: str, now: float, **changes: Any) -> StepRecord:
    """The current step ended in `state` (its attempt closed, its wait over)."""
    step = run.current
    assert step is not None
    last_attempt_s = now - step.attempt_started if step.attempt_started else 0.0
    return replace(
        step,
        state=state,
        attempt_open=False,
        ended=now,
        last_attempt_s=last_attempt_s,
        wait_until=0.0,
        **changes,
    )


def _earliest(until: float, run: RunRecord) -> float:
    """The sooner of `until` and the run's deadline (0: neither)."""
    if not until or not run.deadline:
        return until or run.deadline
    return min(until, run.deadline)


def now() -> float:
    return time.time()
