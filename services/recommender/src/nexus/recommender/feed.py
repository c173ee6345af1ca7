"""The interactions stream: every batch stored on `nexus.interactions.<catalog>`, and every
replica's in-memory logs, which follow it from its first message.

The stream is the one record of what users did: IngestInteractions publishes there (and so may
any producer, with an `InteractionBatch` CloudEvent), training reads the logs, and each replica's
logs follow the stream in order, so a user's new interactions reach every replica's
recommendations without a retrain. A call that must see what was stored before it (its own
batch, or another replica's) waits until this replica applied the stream's last message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.common.errors import DeadlineExceeded, NexusError
from nexus.common.events import DAY_S, EventBus, Follower, Stream, parse_event
from nexus.common.kv import nats_unavailable
from nexus.recommender import wire
from nexus.recommender.recommending import CatalogLog, Interaction
from nexus.recommender.settings import RecommenderSettings

log = logging.getLogger(__name__)

STREAM_NAME = "INTERACTIONS"
SUBJECTS = "nexus.interactions.>"
START_TIMEOUT_S = 300.0
"""Longest a replica replays the stream at start before it gives up."""

Convert = Callable[[pb.InteractionBatch, float], list[Interaction]]
"""A batch as domain interactions (a missing time: the event's); InvalidArgument when bad."""


def stream(settings: RecommenderSettings) -> Stream:
    """The INTERACTIONS stream, with the limits of the settings."""
    return Stream(
        STREAM_NAME,
        (SUBJECTS,),
        max_age_s=settings.interactions_max_age_days * DAY_S,
        max_bytes=settings.interactions_max_bytes,
    )


def subject(catalog: str) -> str:
    """The subject of a catalog's interactions."""
    return f"nexus.interactions.{catalog}"


class InteractionFeed:
    """Publishes batches and keeps this replica's logs, one per catalog.

    Args:
        bus: The event bus.
        settings: The limits (stream size, sync timeout).
        convert: A batch as domain interactions; raises InvalidArgument for a bad one.
    """

    def __init__(self, bus: EventBus, settings: RecommenderSettings, convert: Convert) -> None:
        self._bus = bus
        self._settings = settings
        self._convert = convert
        self._logs: dict[str, CatalogLog] = {}
        self._applied = 0
        self._progress = asyncio.Condition()
        self._follower = Follower(
            bus.nc, STREAM_NAME, SUBJECTS, self._on_message, deliver=api.DeliverPolicy.ALL
        )

    async def start(self) -> None:
        """Ensures the stream, then replays it into the logs (returns once caught up)."""
        await self._bus.ensure_streams(stream(self._settings))
        await self._follower.start()
        await asyncio.wait_for(self._follower.caught_up.wait(), START_TIMEOUT_S)

    async def stop(self) -> None:
        """Stops following."""
        await self._follower.stop()

    def log(self, catalog: str) -> CatalogLog:
        """A catalog's log (empty when it has no interactions yet)."""
        return self._logs.get(catalog) or CatalogLog()

    async def publish(self, catalog: str, interactions: Sequence[Interaction]) -> None:
        """Stores a batch on the stream, then waits until this replica applied it."""
        await self._bus.publish(subject(catalog), wire.batch_of(interactions), subject_hint=catalog)
        await self.sync(catalog)

    async def sync(self, catalog: str) -> None:
        """Waits until this replica applied every batch of `catalog` stored so far.

        Raises:
            DeadlineExceeded: Not within the sync timeout.
            Unavailable: NATS does not answer.
        """
        with nats_unavailable("read the interactions stream"):
            try:
                last = await self._bus.js.get_last_msg(STREAM_NAME, subject(catalog))
            except NotFoundError:
                return
        await self._settled(last.seq or 0)

    async def _settled(self, sequence: int) -> None:
        async with self._progress:
            ready = self._progress.wait_for(lambda: self._applied >= sequence)
            try:
                await asyncio.wait_for(ready, self._settings.sync_timeout_s)
            except TimeoutError as err:
                raise DeadlineExceeded(
                    f"interactions up to {sequence} not applied in "
                    f"{self._settings.sync_timeout_s:g} s (at {self._applied})"
                ) from err

    async def _on_message(self, msg: Msg) -> None:
        sequence = msg.metadata.sequence.stream
        try:
            self._apply(msg, sequence)
        finally:
            async with self._progress:
                self._applied = max(self._applied, sequence)
                self._progress.notify_all()

    def _apply(self, msg: Msg, sequence: int) -> None:
        catalog = msg.subject.removeprefix(subject(""))
        try:
            event = parse_event(msg, pb.InteractionBatch)
            interactions = self._convert(event.data, event.time.timestamp())
        except NexusError as err:  # a bad batch from a producer: nothing of it is applied
            log.warning("skipping interactions %d of %s: %s", sequence, catalog, err)
            return
        self._logs.setdefault(catalog, CatalogLog()).add(interactions, sequence)
