"""Metrics of runs: each one started, each one ended (by final state), and how long each step
took. Counted by the replica whose write made the change, so replicas add up."""

from __future__ import annotations

from nexus.common.telemetry import observe_workflow_step, record_workflow_run
from nexus.orchestrator.engine.records import RunRecord


def started(run: RunRecord) -> None:
    """Counts a run this replica made."""
    record_workflow_run(run.workflow, "STARTED")


def changed(before: RunRecord, after: RunRecord) -> None:
    """Records the steps that `after` ended, and the run's end, when `before` had not."""
    for index, step in enumerate(after.history):
        ended_now = index >= len(before.history) or not before.history[index].done
        if step.done and ended_now:
            seconds = max(step.ended - step.started, 0.0)
            observe_workflow_step(after.workflow, step.kind, step.state, seconds)
    if after.done and not before.done:
        record_workflow_run(after.workflow, after.state)
