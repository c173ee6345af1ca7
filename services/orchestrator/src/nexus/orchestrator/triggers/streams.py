"""The stream an event trigger reads: exactly one JetStream stream must hold its subject filter,
and it must not be the orchestrator's own."""

from __future__ import annotations

import json

from nats.aio.client import Client
from nats.errors import Error as NatsError

from nexus.common.errors import InvalidArgument, Unavailable
from nexus.orchestrator.definitions import Definition
from nexus.orchestrator.definitions.parsing import field_path, step_paths

_API_TIMEOUT_S = 5.0


class EventStreams:
    """Finds the stream of a subject filter, as the server knows it now.

    Args:
        nc: The NATS connection.
        own: Streams a trigger must not read (the orchestrator's own).
    """

    def __init__(self, nc: Client, own: frozenset[str]) -> None:
        self._nc = nc
        self._own = own

    async def stream_of(self, subject: str, field: str) -> str:
        """The one stream that holds `subject`.

        Raises:
            InvalidArgument: On `field` when no stream, several, or the orchestrator's own does.
            Unavailable: NATS does not answer.
        """
        names = await self._names(subject)
        if not names:
            raise InvalidArgument.for_field(
                field,
                f"no JetStream stream holds {subject} (is the service that publishes it "
                "running? it declares its stream at start)",
            )
        if len(names) > 1:
            raise InvalidArgument.for_field(
                field, f"{subject} spans the streams {', '.join(names)}; a trigger reads one"
            )
        if names[0] in self._own:
            raise InvalidArgument.for_field(field, f"{subject} is the orchestrator's own stream")
        return names[0]

    async def check(self, definition: Definition) -> None:
        """Checks the stream of every event trigger and `wait_event` step of a definition
        before it is stored.

        Raises:
            InvalidArgument: As `stream_of`, on `triggers[<i>].event.subject` or the step's
                `wait_event.subject`.
            Unavailable: NATS does not answer.
        """
        for index, trigger in enumerate(definition.triggers):
            if trigger.kind == "event":
                field = f"triggers[{index}].event.subject"
                await self.stream_of(trigger.spec["subject"], field)
        for path, step in step_paths(definition.document):
            if "wait_event" in step:
                field = field_path((*path, "wait_event", "subject"))
                await self.stream_of(step["wait_event"]["subject"], field)

    async def _names(self, subject: str) -> list[str]:
        request = json.dumps({"subject": subject}).encode()
        try:
            reply = await self._nc.request("$JS.API.STREAM.NAMES", request, _API_TIMEOUT_S)
        except (NatsError, TimeoutError) as err:
            raise Unavailable(f"cannot look up the stream of {subject}: {err!r}") from err
        return sorted(json.loads(reply.data).get("streams") or [])
