"""What every trigger does when it fires: check the owner key, then start one run whose id is
derived from what fired it (an event id, a tick), so that any replica, any number of times,
starts that run once."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from nexus.common.auth import KeyStore, required_scope
from nexus.common.telemetry import record_trigger
from nexus.orchestrator.engine.engine import Engine
from nexus.orchestrator.engine.owners import owner_allows
from nexus.orchestrator.workflows import WorkflowVersion

log = logging.getLogger(__name__)

START_RUN = "nexus.orchestrator.v1.OrchestratorService/StartRun"

STARTED, DUPLICATE, FILTERED, REFUSED, REJECTED, MISSED = (
    "started",
    "duplicate",
    "filtered",
    "refused",
    "rejected",
    "missed",
)
"""Outcomes of a firing (the `outcome` label of `nexus_workflow_triggers_total`): a run
started; its run existed already; the event failed the condition; the owner key may not start
runs (revoked, missing or narrowed); the event could not be used (a dead letter); a cron tick
missed while no replica ran, or skipped."""


def run_id_of(workflow: str, trigger: str, key: str) -> str:
    """The id of the run that `trigger` of `workflow` starts for `key` (an event id, a tick)."""
    digest = hashlib.sha256(f"{workflow}\0{trigger}\0{key}".encode()).hexdigest()
    return digest[:32]


class Firing:
    """Starts the runs of fired triggers, as the key that registered the workflow.

    Args:
        engine: Starts runs.
        keys: The API keys (None: auth is off).
    """

    def __init__(self, engine: Engine, keys: KeyStore | None) -> None:
        self._engine = engine
        self._keys = keys
        self._scope = required_scope(START_RUN)

    async def fire(
        self,
        stored: WorkflowVersion,
        trigger: tuple[str, str],
        key: str,
        inputs: dict[str, Any],
    ) -> str:
        """Starts the run of one firing; its outcome (STARTED, DUPLICATE or REFUSED).

        Args:
            stored: The workflow version the trigger belongs to.
            trigger: (kind, trigger id).
            key: What fired it, unique per firing (event id, tick).
            inputs: The run's inputs.

        Raises:
            InvalidArgument: The inputs do not fit the workflow.
            Unavailable: NATS does not answer.
        """
        kind, trigger_id = trigger
        if not await owner_allows(self._keys, stored.owner_key_id, self._scope):
            log.warning(
                "trigger %s of workflow %s did not fire: the key that registered it is revoked, "
                "gone, or lacks %s", trigger_id, stored.name, self._scope,
            )  # fmt: skip
            return self.count(stored, trigger_id, REFUSED)
        run_id = run_id_of(stored.name, trigger_id, key)
        detail = f"{trigger_id}:{key}"
        _, made = await self._engine.begin_run(stored, inputs, (kind, detail), run_id)
        return self.count(stored, trigger_id, STARTED if made else DUPLICATE)

    @staticmethod
    def count(stored: WorkflowVersion, trigger_id: str, outcome: str, n: int = 1) -> str:
        """Counts `n` firings with an outcome in the metrics; returns the outcome."""
        record_trigger(stored.name, trigger_id, outcome, n)
        return outcome
