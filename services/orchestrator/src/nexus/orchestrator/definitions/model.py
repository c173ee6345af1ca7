"""A checked workflow definition: its steps by id, in the order they run."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nexus.orchestrator.definitions.schema import KINDS, MISFIRE_POLICIES, TRIGGER_KINDS

DEFAULT_MISFIRE_GRACE_S = 60.0
"""How late a cron tick may fire and still count as on time (not missed)."""


@dataclass(frozen=True)
class Retry:
    """How a step's failed attempts are retried: exponential backoff with jitter."""

    max_attempts: int = 3
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1 for the first), jitter included."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return base * (1 + self.jitter * (2 * random.random() - 1))


@dataclass(frozen=True)
class Step:
    """One step.

    Attributes:
        id: Unique in its workflow; expressions read its output as `steps.<id>.output`.
        kind: One of `KINDS`.
        spec: The kind's own fields, as written.
        condition: A CEL condition; when false the step is skipped.
        timeout_s: Limit of one attempt (0: the run's).
        retry: How failed attempts are retried.
    """

    id: str
    kind: str
    spec: dict[str, Any]
    condition: str = ""
    timeout_s: float = 0.0
    retry: Retry = field(default_factory=Retry)

    @classmethod
    def of(cls, document: dict[str, Any]) -> Step:
        """The step of a (schema-valid) document."""
        kind = next(kind for kind in KINDS if kind in document)
        return cls(
            id=document["id"],
            kind=kind,
            spec=document[kind],
            condition=document.get("if", ""),
            timeout_s=float(document.get("timeout_s", 0.0)),
            retry=Retry(**document.get("retry", {})),
        )


@dataclass(frozen=True)
class Trigger:
    """What starts runs by itself: an event that passes a condition, or a cron schedule.

    Attributes:
        id: Unique in its workflow; part of the run ids it makes.
        kind: "event" or "cron".
        spec: The kind's own fields, as written.
        inputs: The run's inputs, templates over `event` (event) or `tick` (cron).
    """

    id: str
    kind: str
    spec: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, document: dict[str, Any]) -> Trigger:
        """The trigger of a (schema-valid) document."""
        kind = next(kind for kind in TRIGGER_KINDS if kind in document)
        return cls(document["id"], kind, document[kind], dict(document.get("inputs", {})))

    @property
    def condition(self) -> str:
        """An event trigger's CEL condition over `event` ("": every event)."""
        return str(self.spec.get("condition", ""))

    @property
    def timezone(self) -> str:
        """A cron trigger's IANA time zone (UTC unless given)."""
        return str(self.spec.get("timezone", "UTC"))

    @property
    def misfire(self) -> str:
        """A cron trigger's misfire policy (`MISFIRE_POLICIES`; fire_once unless given)."""
        return str(self.spec.get("misfire", MISFIRE_POLICIES[0]))

    @property
    def misfire_grace_s(self) -> float:
        """How late a tick may be and still fire as on time."""
        return float(self.spec.get("misfire_grace_s", DEFAULT_MISFIRE_GRACE_S))


@dataclass(frozen=True)
class Definition:
    """A workflow definition that passed every check.

    Attributes:
        name: The workflow's name.
        document: The definition as parsed (JSON values).
        steps: Every step by id, nested ones included.
    """

    name: str
    document: dict[str, Any]
    steps: dict[str, Step]

    @classmethod
    def of(cls, document: dict[str, Any]) -> Definition:
        """The definition of a (schema-valid) document."""
        steps = {step.id: step for step in _walk(document)}
        return cls(name=document["name"], document=document, steps=steps)

    @property
    def description(self) -> str:
        return str(self.document.get("description", ""))

    @property
    def timeout_s(self) -> float:
        """The run's timeout (0: none)."""
        return float(self.document.get("timeout_s", 0.0))

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        return dict(self.document.get("inputs", {}))

    @property
    def outputs(self) -> dict[str, Any]:
        return dict(self.document.get("outputs", {}))

    def top_level(self) -> list[str]:
        """The ids of the steps a run starts with."""
        return [step["id"] for step in self.document["steps"]]

    def on_failure(self) -> list[str]:
        """The ids of the on-failure path's steps."""
        return [step["id"] for step in self.document.get("on_failure", [])]

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        """The triggers, in the order written."""
        return tuple(Trigger.of(item) for item in self.document.get("triggers", []))


def _walk(document: dict[str, Any]) -> Iterator[Step]:
    for key in ("steps", "on_failure"):
        yield from _walk_steps(document.get(key, []))


def _walk_steps(steps: list[dict[str, Any]]) -> Iterator[Step]:
    for step in steps:
        yield Step.of(step)
        for nested in nested_lists(step):
            yield from _walk_steps(nested)


def nested_lists(step: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    """The lists of steps inside a (schema-valid) step: a switch's cases and default, a parallel
    step's branches, a map's steps."""
    switch = step.get("switch")
    if switch:
        for case in switch["cases"]:
            yield case["steps"]
        yield switch.get("default", [])
    for branch in step.get("parallel", {}).get("branches", []):
        yield branch["steps"]
    if "map" in step:
        yield step["map"]["steps"]
