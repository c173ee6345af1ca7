"""Cron ticks, in a schedule's time zone: the latest one due, and whether it fires after a
downtime (the misfire policy). Pure functions of times (Unix seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from nexus.orchestrator.definitions import Trigger

MAX_COUNTED = 1_000
"""Missed ticks counted one by one at most (a long downtime of a fast schedule)."""


@dataclass(frozen=True)
class Due:
    """What to do about the ticks since the last one handled.

    Attributes:
        tick: The latest tick due (Unix seconds); the one that fires, if any.
        fire: Whether it fires: on time (within the grace), or late under `fire_once`.
        missed: Ticks that do not fire (earlier ones passed over, and `tick` itself when it
            does not fire).
    """

    tick: float
    fire: bool
    missed: int


def latest_tick(trigger: Trigger, now: float) -> float:
    """The latest tick of the schedule at or before `now`."""
    current = _ticks(trigger, now - 1e-3).get_next(float)  # `now` itself when it is a tick
    if current <= now:
        return float(current)
    return float(_ticks(trigger, now).get_prev(float))


def next_tick(trigger: Trigger, after: float) -> float:
    """The first tick of the schedule after `after`."""
    return float(_ticks(trigger, after).get_next(float))


def due(trigger: Trigger, last: float, now: float) -> Due | None:
    """The decision about the first tick after `last`, up to `now`; None when none is due.

    A tick at most `misfire_grace_s` late fires on its own (a replica that fell behind by a few
    ticks fires each). When the first due tick is later than that (no replica ran), the ticks
    since are missed and give at most one run: the latest of them fires under `fire_once` (the
    default), or when it is itself on time; under `skip` a late one does not.
    """
    first = next_tick(trigger, last)
    if first > now:
        return None
    if now - first <= trigger.misfire_grace_s:
        return Due(tick=first, fire=True, missed=0)
    tick = latest_tick(trigger, now)
    earlier = _count_between(trigger, last, tick)
    fire = now - tick <= trigger.misfire_grace_s or trigger.misfire == "fire_once"
    return Due(tick=tick, fire=fire, missed=earlier + (0 if fire else 1))


def _count_between(trigger: Trigger, after: float, before: float) -> int:
    """Ticks strictly between `after` and `before` (at most `MAX_COUNTED`)."""
    ticks = croniter(
        trigger.spec["schedule"], datetime.fromtimestamp(after, ZoneInfo(trigger.timezone))
    )
    count = 0
    while count < MAX_COUNTED and ticks.get_next(float) < before:
        count += 1
    return count


def tick_text(trigger: Trigger, tick: float) -> str:
    """A tick as ISO 8601 in the schedule's time zone (`2026-12-03T02:00:00+01:00`)."""
    return datetime.fromtimestamp(tick, ZoneInfo(trigger.timezone)).isoformat()


def _ticks(trigger: Trigger, at: float) -> croniter:
    """The schedule's ticks from `at`, in its time zone (so that DST moves them as it should)."""
    start = datetime.fromtimestamp(at, ZoneInfo(trigger.timezone))
    return croniter(trigger.spec["schedule"], start)
