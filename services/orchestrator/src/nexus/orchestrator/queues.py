"""How much waits in the orchestrator's queues (its run advances, each event trigger's events),
sampled from the server into `nexus_workflow_queue_pending{queue}`."""

from __future__ import annotations

from collections.abc import Callable

from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from nexus.common.telemetry import set_workflow_queue
from nexus.orchestrator.periodic import Periodic

Queues = Callable[[], dict[str, str]]
"""The queues to sample now: durable consumer -> its stream."""


class QueueGauges:
    """Samples the pending messages of each queue every `interval_s`.

    Args:
        js: The JetStream context.
        queues: The queues to sample (they change as workflow versions come and go).
        interval_s: How often.
    """

    def __init__(self, js: JetStreamContext, queues: Queues, interval_s: float) -> None:
        self._js = js
        self._queues = queues
        self._shown: set[str] = set()
        self._sampling = Periodic("orchestrator-queue-gauges", interval_s, self.sample)

    async def start(self) -> None:
        self._sampling.start()

    async def stop(self) -> None:
        await self._sampling.stop()

    async def sample(self) -> None:
        """Sets each queue's gauge, and removes those of queues that are gone."""
        queues = self._queues()
        for durable, stream in queues.items():
            try:
                info = await self._js.consumer_info(stream, durable)
            except (NotFoundError, NatsError, TimeoutError):  # gone, or NATS away: next turn
                continue
            set_workflow_queue(durable, (info.num_pending or 0) + (info.num_ack_pending or 0))
            self._shown.add(durable)
        for durable in self._shown - set(queues):
            set_workflow_queue(durable, None)
        self._shown &= set(queues)
