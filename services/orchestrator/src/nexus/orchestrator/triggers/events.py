"""Event triggers: one durable JetStream consumer per trigger of a workflow's latest version,
shared by every replica (each event is handled by one of them). An event that passes the
condition starts one run whose id is derived from the event's id (`ce-id`, which is also its
`Nats-Msg-Id`), so a redelivery, a re-publication or another replica starts nothing more. An
event that fails the condition is acknowledged and counted; one that cannot be used (a
condition that errs on it, inputs the workflow refuses) becomes a dead letter."""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

from google.protobuf import message_factory
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from nexus.common.errors import InvalidArgument
from nexus.common.events import Consumer, Event, EventBus
from nexus.orchestrator import expressions
from nexus.orchestrator.definitions import Definition, Trigger
from nexus.orchestrator.definitions.parsing import find_message
from nexus.orchestrator.engine.waits import event_value
from nexus.orchestrator.settings import OrchestratorSettings
from nexus.orchestrator.triggers.firing import FILTERED, REJECTED, Firing
from nexus.orchestrator.triggers.streams import EventStreams
from nexus.orchestrator.workflows import WorkflowStore, WorkflowVersion

log = logging.getLogger(__name__)

MAX_DELIVER = 5
"""Deliveries of an event whose run could not be started (NATS down) before its dead letter."""


def durable_name(stored: WorkflowVersion, trigger: Trigger) -> str:
    """The consumer of a trigger of one workflow version (a new version gets new consumers)."""
    return f"orchestrator-trigger-{stored.name}-v{stored.version}-{trigger.id}"


@dataclass
class _Running:
    stream: str
    consumer: Consumer


class EventTriggers:
    """The event triggers this replica consumes.

    Args:
        bus: The event bus.
        workflows: The registered workflows (when each version was stored).
        streams: Finds each trigger's stream.
        firing: Starts the runs.
        settings: Concurrency and ack wait.
    """

    def __init__(
        self,
        bus: EventBus,
        workflows: WorkflowStore,
        streams: EventStreams,
        firing: Firing,
        settings: OrchestratorSettings,
    ) -> None:
        self._bus = bus
        self._workflows = workflows
        self._streams = streams
        self._firing = firing
        self._settings = settings
        self._running: dict[str, dict[str, _Running]] = {}  # workflow -> durable -> consumer

    async def apply(
        self, name: str, stored: WorkflowVersion | None, definition: Definition | None
    ) -> None:
        """Consumes the event triggers of workflow `name`'s latest version (None: of no
        version), and stops (and deletes) the consumers of any other. Applying it again after
        a failure starts what is missing.

        Raises:
            NexusError, nats.errors.Error, TimeoutError: A consumer could not start (no stream
                holds its subject yet, NATS does not answer).
        """
        wanted: dict[str, Trigger] = {}
        if stored is not None and definition is not None:
            wanted = {durable_name(stored, t): t for t in definition.triggers if t.kind == "event"}
        running = self._running.setdefault(name, {})
        for durable in [d for d in running if d not in wanted]:
            await self._retire(running.pop(durable), durable)
        for durable, trigger in wanted.items():
            if durable not in running and stored is not None:
                running[durable] = await self._consume(stored, trigger, durable)

    async def stop(self) -> None:
        """Stops every consumer (they stay on the server for the other replicas)."""
        for running in self._running.values():
            for item in running.values():
                await item.consumer.stop()
        self._running.clear()

    def queues(self) -> dict[str, str]:
        """The consumers running here: durable name -> stream."""
        return {
            durable: item.stream
            for running in self._running.values()
            for durable, item in running.items()
        }

    async def _consume(self, stored: WorkflowVersion, trigger: Trigger, durable: str) -> _Running:
        subject = trigger.spec["subject"]
        stream = await self._streams.stream_of(subject, f"triggers.{trigger.id}.event.subject")
        descriptor = find_message(trigger.spec["type"])
        if descriptor is None:  # a message type gone from this build since registration
            raise InvalidArgument.for_field("type", f"unknown message type {trigger.spec['type']}")
        consumer = await self._bus.consume(
            subject,
            message_factory.GetMessageClass(descriptor),
            partial(self._handle, stored, trigger),
            durable=durable,
            stream=stream,
            batch=self._settings.trigger_concurrency,
            concurrency=self._settings.trigger_concurrency,
            max_deliver=MAX_DELIVER,
            ack_wait_s=self._settings.ack_wait_s,
            # Events stored after the version (by the server's clock), whichever replica
            # makes the consumer first: the start time is part of its configuration.
            start_time=await self._workflows.stored_at(stored),
        )
        log.info("consuming trigger %s of %s v%d", trigger.id, stored.name, stored.version)
        return _Running(stream, consumer)

    async def _retire(self, item: _Running, durable: str) -> None:
        """Stops a consumer of a version that is no longer the latest, and deletes it on the
        server (another replica may have done so already)."""
        await item.consumer.stop()
        with suppress(NotFoundError, NatsError, TimeoutError):
            await self._bus.js.delete_consumer(item.stream, durable)

    async def _handle(self, stored: WorkflowVersion, trigger: Trigger, event: Event[Any]) -> None:
        """One event: a run when it passes the condition (counted either way).

        Raises:
            InvalidArgument: The condition or the inputs fail on this event (a dead letter).
        """
        context = {"event": event_value(event)}
        try:
            passes = not trigger.condition or expressions.condition(trigger.condition, context)
            inputs = expressions.render(trigger.inputs, context) if passes else {}
        except expressions.ExpressionError as err:
            self._firing.count(stored, trigger.id, REJECTED)
            raise InvalidArgument(f"trigger {trigger.id} of {stored.name}: {err}") from err
        if not passes:
            self._firing.count(stored, trigger.id, FILTERED)
            return
        try:
            await self._firing.fire(stored, ("event", trigger.id), event.id, inputs)
        except InvalidArgument:
            self._firing.count(stored, trigger.id, REJECTED)
            raise
