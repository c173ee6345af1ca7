"""Which orchestrator replicas are alive: each writes its id to KV `nexus_orchestrator_replicas`
every third of the ack wait (the time of the beat as its value), and every replica follows the
bucket. A run driven by the replica that started it (no advance on the queue, ADR 0053) names
that replica (`driven_by`); when the replica's beats stop for an ack wait (a SIGKILL), or its key
is deleted (a graceful stop), any replica takes the run over through the queue: as promptly as
an advance whose replica died comes back from the queue.

A beat is the time, then `VIEWS_MARK`: a replica of a version before ADR 0056 writes the time
alone, and publishes no views of the runs it writes, so while one of those beats the others
follow the runs' writes too (`older_alive`).
"""

from __future__ import annotations

import contextlib
import time
import uuid

from nats.aio.client import Client
from nats.js import api
from nats.js.kv import KeyValue

from nexus.common.events import DAY_S
from nexus.common.kv import KvEntry, KvFollower, nats_unavailable, open_key_value
from nexus.orchestrator.periodic import Periodic

BUCKET = "nexus_orchestrator_replicas"
_CONFIG = api.KeyValueConfig(
    bucket=BUCKET,
    description="Nexus orchestrator: the replicas' beats (which are alive)",
    history=1,
    ttl=DAY_S,  # the keys of replicas gone long ago expire
    max_value_size=64,
    storage=api.StorageType.FILE,
)


VIEWS_MARK = "views"
"""After the time in the beat of a replica that publishes the runs' views (ADR 0056)."""


class Replicas:
    """This replica's beat, and the beats of the others.

    Args:
        nc: The NATS connection.
        silence_s: How long a replica may be silent and still count as alive (the ack wait).
    """

    def __init__(self, nc: Client, silence_s: float) -> None:
        self.id = uuid.uuid4().hex
        self._nc = nc
        self._silence_s = silence_s
        self._kv: KeyValue | None = None
        self._follower = KvFollower(nc, BUCKET, self._seen_entry)
        self._beat = Periodic("orchestrator-beat", silence_s / 3, self.beat)
        self._seen: dict[str, float] = {}  # replica id -> when its last beat was (monotonic)
        self._beating_since = float("inf")  # since when this replica's own beats succeed
        self._older: set[str] = set()  # replicas whose beats carry no VIEWS_MARK
        self._silent: set[str] = set()  # as of the last `newly_silent`

    async def start(self) -> None:
        """Opens the bucket, writes the first beat, follows the others'.

        Raises:
            Unavailable: NATS does not answer.
        """
        with nats_unavailable(f"open the bucket {BUCKET}"):
            self._kv = await open_key_value(self._nc.jetstream(), _CONFIG)
        await self.beat()
        await self._follower.start()
        self._beat.start()

    async def stop(self) -> None:
        """Stops beating and deletes this replica's key: the others take its runs over now."""
        await self._beat.stop()
        await self._follower.stop()
        if self._kv is not None:
            with contextlib.suppress(Exception):  # NATS gone: the beats stop all the same
                await self._kv.delete(self.id)

    async def beat(self) -> None:
        assert self._kv is not None, "start() first"
        try:
            with nats_unavailable("write the replica's beat"):
                await self._kv.put(self.id, f"{time.time():.3f} {VIEWS_MARK}".encode())
        except Exception:
            self._beating_since = float("inf")
            raise
        self._beating_since = min(self._beating_since, time.monotonic())

    def alive(self, replica: str) -> bool:
        """Whether `replica` beat within the silence allowed. This one always does; one never
        seen counts from when it was first asked about; and none is judged dead until this
        replica's own beats went through for that long (after NATS was away, every replica's
        beats come again first)."""
        now = time.monotonic()
        if replica == self.id or now - self._beating_since < self._silence_s:
            return True
        return now - self._seen.setdefault(replica, now) < self._silence_s

    def newly_silent(self) -> bool:
        """Whether a replica went silent, or stopped, since the last call."""
        silent = {replica for replica in self._seen if not self.alive(replica)}
        new = bool(silent - self._silent)
        self._silent = silent
        return new

    def older_alive(self) -> bool:
        """Whether a replica of a version that publishes no views beat within the silence
        allowed."""
        now = time.monotonic()
        return any(now - self._seen.get(r, float("-inf")) < self._silence_s for r in self._older)

    async def _seen_entry(self, entry: KvEntry) -> None:
        if entry.removed:
            self._seen[entry.key] = float("-inf")
            self._older.discard(entry.key)
            return
        beat, _, mark = entry.value.decode(errors="replace").partition(" ")
        if mark == VIEWS_MARK:
            self._older.discard(entry.key)
        else:
            self._older.add(entry.key)
        now = time.monotonic()
        if entry.initial:  # a beat from before this replica started: as old as it says
            with contextlib.suppress(ValueError):
                now -= max(0.0, time.time() - float(beat))
        self._seen[entry.key] = now
