"""Cron triggers: every replica watches every schedule; a tick fires once however many do.

The claim of a tick is its run: the run id is derived from (workflow, trigger, tick), and runs
are made with KV create, so whichever replica comes first starts it and the others find it made.
The last tick handled per trigger is kept in KV `nexus_orchestrator_schedules` (compare-and-set,
only ever moved forward), so that after a downtime a replica knows which ticks were missed and
applies the trigger's misfire policy. A replica that dies between the run and that record leaves
the tick to the next replica, which finds the run made and starts nothing more.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import api
from nats.js.kv import KeyValue

from nexus.common.errors import InvalidArgument
from nexus.common.kv import nats_unavailable, open_key_value, update_entry
from nexus.orchestrator import expressions
from nexus.orchestrator.definitions import Definition, Trigger
from nexus.orchestrator.periodic import Periodic
from nexus.orchestrator.triggers.firing import MISSED, REJECTED, Firing
from nexus.orchestrator.triggers.ticks import Due, due, next_tick, tick_text
from nexus.orchestrator.workflows import WorkflowVersion

log = logging.getLogger(__name__)

BUCKET = "nexus_orchestrator_schedules"
POLL_S = 0.2
"""How often a replica looks for due ticks (cron ticks are a second apart at the least)."""
MAX_TICKS_PER_TURN = 100
"""Ticks one replica handles per schedule and turn (a fast schedule it fell behind on)."""
_CONFIG = api.KeyValueConfig(
    bucket=BUCKET,
    description="Nexus orchestrator: the last tick handled of each cron trigger",
    history=1,
    max_value_size=1024,
    storage=api.StorageType.FILE,
)


@dataclass
class Schedule:
    """One cron trigger of a workflow's latest version, the last tick this replica knows was
    handled (by any replica), and the tick after it (0: not known yet)."""

    stored: WorkflowVersion
    trigger: Trigger
    last: float = 0.0
    next_at: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.stored.name}.{self.trigger.id}"


class Schedules:
    """The cron triggers this replica watches.

    Args:
        nc: The NATS connection.
        firing: Starts the runs.
    """

    def __init__(self, nc: Client, firing: Firing) -> None:
        self._nc = nc
        self._firing = firing
        self._kv: KeyValue | None = None
        self._schedules: dict[str, dict[str, Schedule]] = {}  # workflow -> trigger id -> it
        self._clock = Periodic("orchestrator-cron", POLL_S, self._turn)

    async def start(self) -> None:
        """Opens the bucket and starts watching the clock."""
        with nats_unavailable("open the schedules bucket"):
            self._kv = await open_key_value(self._nc.jetstream(), _CONFIG)
        self._clock.start()

    async def stop(self) -> None:
        await self._clock.stop()

    def apply(self, stored: WorkflowVersion, definition: Definition) -> None:
        """Watches the cron triggers of a workflow's latest version (and no other's)."""
        known = self._schedules.get(stored.name, {})
        self._schedules[stored.name] = {
            t.id: Schedule(stored, t, known[t.id].last if t.id in known else 0.0)
            for t in definition.triggers
            if t.kind == "cron"
        }  # the next tick is computed again: the schedule may have changed

    def forget(self, workflow: str) -> None:
        """Stops watching a workflow's schedules."""
        self._schedules.pop(workflow, None)

    async def _turn(self) -> None:
        now = time.time()
        for schedules in list(self._schedules.values()):
            for schedule in list(schedules.values()):
                try:
                    await self._check(schedule, now)
                except Exception:  # the next turn tries again
                    log.exception("cron trigger %s failed", schedule.key)

    async def _check(self, schedule: Schedule, now: float) -> None:
        if now < schedule.next_at:
            return  # the next tick is not due: no read
        schedule.last = await self._last(schedule)
        for _ in range(MAX_TICKS_PER_TURN):
            decision = due(schedule.trigger, schedule.last, now)
            if decision is None:
                break  # caught up (or another replica handled it)
            await self._handle(schedule, decision)
            await self._advance(schedule, decision.tick)
        schedule.next_at = next_tick(schedule.trigger, schedule.last)

    async def _handle(self, schedule: Schedule, decision: Due) -> None:
        stored, trigger = schedule.stored, schedule.trigger
        if decision.missed:
            self._firing.count(stored, trigger.id, MISSED, decision.missed)
            log.warning(
                "cron trigger %s missed %d tick(s) (misfire %s)",
                schedule.key, decision.missed, trigger.misfire,
            )  # fmt: skip
        if not decision.fire:
            return
        tick = tick_text(trigger, decision.tick)
        context = {"tick": {"time": tick, "unix": decision.tick, "trigger": trigger.id}}
        try:
            inputs = expressions.render(trigger.inputs, context)
            await self._firing.fire(stored, ("cron", trigger.id), tick, inputs)
        except (expressions.ExpressionError, InvalidArgument) as err:
            self._firing.count(stored, trigger.id, REJECTED)
            log.error("cron trigger %s could not start a run at %s: %s", schedule.key, tick, err)

    async def _last(self, schedule: Schedule) -> float:
        """The last tick handled (made the version's registration time when none is stored)."""
        initial = json.dumps({"last_tick": schedule.stored.created}).encode()
        assert self._kv is not None

        def keep(raw: bytes | None) -> bytes | None:
            return initial if raw is None else None

        with nats_unavailable("read a schedule"):
            raw, _ = await update_entry(self._kv, schedule.key, keep)
        return float(json.loads(raw or initial)["last_tick"])

    async def _advance(self, schedule: Schedule, tick: float) -> None:
        """Records `tick` as handled (never moving the record back)."""
        assert self._kv is not None

        def forward(raw: bytes | None) -> bytes | None:
            last = float(json.loads(raw)["last_tick"]) if raw else 0.0
            return json.dumps({"last_tick": tick}).encode() if tick > last else None

        with nats_unavailable("record a tick"):
            await update_entry(self._kv, schedule.key, forward)
        schedule.last = max(schedule.last, tick)
